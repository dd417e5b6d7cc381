//! Examples live in `library.rs` (`cargo run --release -p mtl-examples --example library`).
