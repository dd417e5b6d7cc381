//! # mtl-models — the model registry
//!
//! Every model type a run config can name (`[model] type = "…"`), one line each. The trainer,
//! the scorer and the server know models only through the
//! [`Registry`](mtl_layers::Registry) this crate declares, so it sits above the model crates
//! and below everything that drives them; the CLI, xtask, tests and benches take their models
//! from here. Adding a model is one file (or crate) implementing
//! `mtl_layers::ModelBuilder` for its config, an example run config under `configs/`, and one
//! line below naming both. The example configs are the one home of every example `[model]`
//! table: `mtl models`, the CLI's demo, xtask's benches and the tests that run every model
//! read them from there.
//!
//! ```
//! use mtl_layers::{Registry, parse_model};
//! use mtl_models::Models;
//! assert!(Models::KINDS.contains(&"esmm"));
//! let (about, example) = Models::about("mmoe").unwrap();
//! assert!(about.contains("Mixture-of-Experts") && example.contains("n_experts"));
//! let model = parse_model::<Models>(mtl_layers::model_section(example)).unwrap();
//! assert_eq!(Models::kind(&model), "mmoe");
//! ```

mtl_layers::registry! {
    /// The `[model]` table of a run config: one variant per model type mtl ships.
    pub enum ModelConfig in Models {
        "esmm" => Esmm(mtl_esmm::EsmmConfig) from include_str!("../../../configs/esmm-example.toml"),
        "esmm_chain" => EsmmChain(mtl_esmm::EsmmChainConfig) from include_str!("../../../configs/esmm-chain-example.toml"),
        "escm2" => Escm2(mtl_esmm::Escm2Config) from include_str!("../../../configs/escm2-example.toml"),
        "mmoe" => Mmoe(mtl_mmoe::MmoeConfig) from include_str!("../../../configs/mmoe-example.toml"),
        "omoe" => Omoe(mtl_mmoe::OmoeConfig) from include_str!("../../../configs/omoe-example.toml"),
        "shared_bottom" => SharedBottom(mtl_mmoe::SharedBottomConfig) from include_str!("../../../configs/shared-bottom-example.toml"),
        "ple" => Ple(mtl_mmoe::PleConfig) from include_str!("../../../configs/ple-example.toml"),
        "aitm" => Aitm(mtl_mmoe::AitmConfig) from include_str!("../../../configs/aitm-example.toml"),
        "dbmtl" => Dbmtl(mtl_mmoe::DbmtlConfig) from include_str!("../../../configs/dbmtl-example.toml"),
        "pepnet" => Pepnet(mtl_mmoe::PepnetConfig) from include_str!("../../../configs/pepnet-example.toml"),
    }
}
