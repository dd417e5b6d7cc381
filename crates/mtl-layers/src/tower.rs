//! Pluggable task towers: every tower ends in one output (a logit or a value) and is one of
//!
//! ```text
//! mlp     t(x) = MLP(x)
//! deepfm  t(x) = MLP(x) + FM(e)       FM(e) = ½ Σ_d [(Σ_f e_fd)² − Σ_f e_fd²]
//! dcn     t(x) = MLP(x_L)             x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l,  x_0 = x
//! ```
//!
//! `x` is the tower's input (the pooled embeddings for ESMM, the task's expert mixture for
//! MMOE/PLE); `e` are the field embeddings `[batch, fields, dim]` of the shared input layer, so
//! a DeepFM tower adds the factorisation machine's second-order interactions of the raw fields
//! (Guo et al., IJCAI 2017) to whatever its MLP sees, with no parameters of its own. The `dcn`
//! tower is DCN-V2's stacked form (Wang et al., WWW 2021): `cross_layers` full-rank cross
//! layers, then the MLP.
//!
//! Parameter counts over an input of width `d`: `mlp` and `deepfm` the MLP's; `dcn` the MLP's
//! plus `cross_layers × (d² + d)`.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::head::output_at_prior;
use crate::mlp::{Activation, MlpSpec};
use crate::{Mlp, ModelError};

/// The most cross layers a `dcn` tower may stack.
pub const MAX_CROSS_LAYERS: usize = 16;

/// What a tower computes before its output (`kind = "mlp" | "deepfm" | "dcn"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TowerKind {
    /// An MLP.
    #[default]
    Mlp,
    /// An MLP plus the factorisation machine's pairwise interactions of the field embeddings.
    Deepfm,
    /// DCN-V2 cross layers, then an MLP.
    Dcn,
}

fn default_true() -> bool {
    true
}

/// A tower's configuration: an [`MlpSpec`]'s keys plus `kind` and (for `dcn`)
/// `cross_layers`. `{ dims = [8] }` is the MLP tower it always was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TowerSpec {
    /// The kind of tower.
    #[serde(default)]
    pub kind: TowerKind,
    /// Hidden layer widths of the MLP (a final Linear to one output is added).
    pub dims: Vec<usize>,
    /// Activation after each hidden layer.
    #[serde(default)]
    pub activation: Activation,
    /// Dropout probability after each hidden layer.
    #[serde(default)]
    pub dropout: f64,
    /// BatchNorm after each hidden Linear.
    #[serde(default = "default_true")]
    pub batch_norm: bool,
    /// Cross layers of a `dcn` tower (default 2; only with `kind = "dcn"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_layers: Option<usize>,
}

impl From<MlpSpec> for TowerSpec {
    fn from(mlp: MlpSpec) -> Self {
        Self {
            kind: TowerKind::Mlp,
            dims: mlp.dims,
            activation: mlp.activation,
            dropout: mlp.dropout,
            batch_norm: mlp.batch_norm,
            cross_layers: None,
        }
    }
}

impl TowerSpec {
    /// An MLP tower with hidden layers `dims` (torch-rechub's defaults).
    pub fn mlp(dims: impl Into<Vec<usize>>) -> Self {
        MlpSpec::new(dims).into()
    }

    /// The same tower as another kind (`cross_layers` as given, for `dcn`).
    pub fn with_kind(mut self, kind: TowerKind, cross_layers: Option<usize>) -> Self {
        self.kind = kind;
        self.cross_layers = cross_layers;
        self
    }

    /// The MLP part.
    pub fn mlp_spec(&self) -> MlpSpec {
        MlpSpec {
            dims: self.dims.clone(),
            activation: self.activation,
            dropout: self.dropout,
            batch_norm: self.batch_norm,
        }
    }

    /// The number of cross layers this tower has (0 unless `dcn`).
    pub fn n_cross(&self) -> usize {
        match self.kind {
            TowerKind::Dcn => self.cross_layers.unwrap_or(2),
            _ => 0,
        }
    }

    /// Checks the values a TOML file can get wrong, naming `key` (e.g. `model.ctr_tower`):
    /// the MLP's, `cross_layers` only on a `dcn` tower and between 1 and
    /// [`MAX_CROSS_LAYERS`], and a `deepfm` tower only over at least two embedded fields
    /// (`fields`, the input layer's sparse and sequence fields).
    pub fn check(&self, key: &str, fields: usize) -> Result<(), ModelError> {
        self.mlp_spec().check(key)?;
        match (self.kind, self.cross_layers) {
            (TowerKind::Dcn, Some(n)) if n == 0 || n > MAX_CROSS_LAYERS => Err(ModelError::Invalid {
                key: format!("{key}.cross_layers"),
                message: format!("= {n}: a dcn tower has 1 to {MAX_CROSS_LAYERS} cross layers"),
            }),
            (TowerKind::Mlp | TowerKind::Deepfm, Some(_)) => Err(ModelError::Invalid {
                key: format!("{key}.cross_layers"),
                message: format!(
                    "is only for kind = \"dcn\" (this tower is \"{}\")",
                    self.kind_name()
                ),
            }),
            (TowerKind::Deepfm, None) if fields < 2 => Err(ModelError::Invalid {
                key: format!("{key}.kind"),
                message: format!(
                    "= \"deepfm\" needs at least two embedded (sparse or sequence) fields of one embed_dim to interact; the schema has {fields} such fields"
                ),
            }),
            _ => Ok(()),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            TowerKind::Mlp => "mlp",
            TowerKind::Deepfm => "deepfm",
            TowerKind::Dcn => "dcn",
        }
    }

    /// Builds the tower over inputs of width `input_dim`, ending in one output.
    pub fn init(&self, input_dim: usize, device: &Device) -> Tower {
        Tower {
            cross: (0..self.n_cross())
                .map(|_| CrossLayer {
                    linear: LinearConfig::new(input_dim, input_dim).init(device),
                })
                .collect(),
            mlp: self.mlp_spec().init(input_dim, true, device),
            fm: self.kind == TowerKind::Deepfm,
        }
    }
}

/// One DCN-V2 cross layer: `x_{l+1} = x_0 ⊙ (W x_l + b) + x_l`.
#[derive(Module, Debug)]
pub struct CrossLayer {
    /// `W` (`d × d`) and `b`.
    pub linear: Linear,
}

impl CrossLayer {
    /// # Shapes
    /// - `x0`, `x`: `[batch, d]`
    /// - output: `[batch, d]`
    pub fn forward(&self, x0: Tensor<2>, x: Tensor<2>) -> Tensor<2> {
        x0 * self.linear.forward(x.clone()) + x
    }
}

/// A built tower (see the [module docs](self) for its equations).
#[derive(Module, Debug)]
pub struct Tower {
    /// Cross layers (empty unless `dcn`).
    pub cross: Vec<CrossLayer>,
    /// The MLP, ending in one output.
    pub mlp: Mlp,
    /// Whether the FM term of the field embeddings is added (`deepfm`).
    #[module(skip)]
    pub fm: bool,
}

/// The factorisation machine's second-order term of field embeddings,
/// `½ Σ_d [(Σ_f e_fd)² − Σ_f e_fd²]` = `Σ_{f<g} ⟨e_f, e_g⟩`.
///
/// # Shapes
/// - `fields`: `[batch, fields, dim]`
/// - output: `[batch, 1]`
pub fn fm_interactions(fields: Tensor<3>) -> Tensor<2> {
    let [b, _, _] = fields.dims();
    let square_of_sum = fields.clone().sum_dim(1).square(); // [batch, 1, dim]
    let sum_of_squares = fields.square().sum_dim(1); // [batch, 1, dim]
    (square_of_sum - sum_of_squares)
        .sum_dim(2)
        .mul_scalar(0.5)
        .reshape([b, 1])
}

impl Tower {
    /// The same tower starting at a prior: its output bias set to `bias` (a logit for a
    /// sigmoid head) and, when `zero_weights`, its output weights set to zero, so that it
    /// starts at `bias` on every row (plus a `deepfm` tower's FM term) instead of at a random
    /// function of its input. Parameter ids are kept.
    pub fn with_output_prior(mut self, bias: f64, zero_weights: bool) -> Self {
        self.mlp.output = (self.mlp.output).map(|linear| output_at_prior(linear, bias, zero_weights));
        self
    }

    /// The tower's output. `fields` (the input layer's field embeddings) is read only by a
    /// `deepfm` tower, which the config check guarantees has them.
    ///
    /// # Shapes
    /// - `x`: `[batch, input_dim]`
    /// - `fields`: `[batch, fields, dim]`
    /// - output: `[batch, 1]`
    pub fn forward(&self, x: Tensor<2>, fields: Option<&Tensor<3>>) -> Tensor<2> {
        let x0 = x.clone();
        let x = self.cross.iter().fold(x, |x, layer| layer.forward(x0.clone(), x));
        let out = self.mlp.forward(x);
        match (self.fm, fields) {
            (true, Some(fields)) => out + fm_interactions(fields.clone()),
            _ => out,
        }
    }
}
