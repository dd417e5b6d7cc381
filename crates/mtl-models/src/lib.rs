//! # mtl-models — the model registry
//!
//! Every model type a run config can name (`[model] type = "…"`), one line each. The trainer,
//! the scorer and the server know models only through the
//! [`Registry`](mtl_layers::Registry) this crate declares, so it sits above the model crates
//! and below everything that drives them; the CLI, xtask, tests and benches take their models
//! from here. Adding a model is one file (or crate) implementing
//! `mtl_layers::ModelBuilder` for its config, and one line below.
//!
//! ```
//! use mtl_layers::{Registry, parse_model};
//! use mtl_models::Models;
//! assert!(Models::KINDS.contains(&"esmm"));
//! let (about, example) = Models::about("mmoe").unwrap();
//! assert!(about.contains("Mixture-of-Experts") && example.contains("n_experts"));
//! let model = parse_model::<Models>(&format!("type = \"mmoe\"\n{example}")).unwrap();
//! assert_eq!(Models::kind(&model), "mmoe");
//! ```

mtl_layers::registry! {
    /// The `[model]` table of a run config: one variant per model type mtl ships.
    pub enum ModelConfig in Models {
        "esmm" => Esmm(mtl_esmm::EsmmConfig),
        "esmm_chain" => EsmmChain(mtl_esmm::EsmmChainConfig),
        "mmoe" => Mmoe(mtl_mmoe::MmoeConfig),
        "omoe" => Omoe(mtl_mmoe::OmoeConfig),
        "shared_bottom" => SharedBottom(mtl_mmoe::SharedBottomConfig),
        "ple" => Ple(mtl_mmoe::PleConfig),
        "aitm" => Aitm(mtl_mmoe::AitmConfig),
    }
}
