//! # mtl-models — the model registry
//!
//! Every model type a run config can name (`[model] type = "…"`), one line each. The trainer
//! knows models only through the [`Registry`](mtl_trainer::Registry) this crate declares, so
//! it sits above the model crates and the trainer; the CLI, xtask, tests and benches take their
//! models from here. Adding a model is one file (or crate) implementing
//! `mtl_layers::ModelBuilder` for its config, and one line below.
//!
//! ```
//! use mtl_models::{Models, RunConfig};
//! use mtl_trainer::Registry;
//! assert!(Models::KINDS.contains(&"esmm"));
//! let (about, example) = Models::about("mmoe").unwrap();
//! assert!(about.contains("Mixture-of-Experts") && example.contains("n_experts"));
//! let text = format!("schema = \"s.toml\"\n[data]\ntrain = \"t.csv\"\n[model]\ntype = \"mmoe\"\n{example}");
//! let config = RunConfig::from_toml_str(&text, "inline.toml").unwrap();
//! assert_eq!(Models::kind(&config.model), "mmoe");
//! ```

mtl_trainer::registry! {
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

/// A run config whose model is any registered type.
pub type RunConfig = mtl_trainer::RunConfig<Models>;

/// A trained model directory whose model is any registered type.
pub type ModelDir = mtl_trainer::ModelDir<Models>;
