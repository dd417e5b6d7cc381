//! How the trainer, the scorer and the server meet models they do not know: a [`Registry`]
//! of model types, written with the [`registry!`](crate::registry!) macro one line per model
//! in a crate above the model crates (`mtl-models`), so that everything that drives models
//! depends on the model contract only.
//!
//! Every function that reads a run config or builds a model is generic over the registry
//! (`train::<Models>(…)`): the training loop stays monomorphic per model type (burn's modules
//! are not object-safe), and a new model is one file plus one line.

use burn::tensor::Device;
use mtl_features::{TableLayout, ValidSchema};
use serde::Serialize;

use crate::{ModelError, ModelPlan, MultiTaskModel};

/// Something to do with a freshly built model, whatever its type.
pub trait WithModel {
    /// What it returns.
    type Out;
    /// Its error; building the model can fail with a [`ModelError`] too.
    type Error: From<ModelError>;
    /// Does it.
    fn run<M: MultiTaskModel + 'static>(self, model: M) -> Result<Self::Out, Self::Error>;
}

/// A set of model types, each known by its `type` name in a run config.
pub trait Registry: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// The `[model]` table of any registered type (serialised with its `type`).
    type Config: Clone + std::fmt::Debug + PartialEq + Serialize + Send + Sync;

    /// Every `type` name, in registration order.
    const KINDS: &'static [&'static str];

    /// The `type` name of a config.
    fn kind(config: &Self::Config) -> &'static str;

    /// One line on the model type and its example run config (a file under `configs/`,
    /// embedded: the one home of every example `[model]` table), for `mtl models`.
    fn about(kind: &str) -> Option<(&'static str, &'static str)>;

    /// Reads the `[model]` table (its `type` key removed) of type `kind`, one of
    /// [`Registry::KINDS`]; errors keep the table's own spans.
    fn parse(kind: &str, table: toml::de::ValueDeserializer<'_>) -> Result<Self::Config, toml::de::Error>;

    /// Checks a config against the schema and says what the model outputs.
    fn plan(config: &Self::Config, schema: &ValidSchema) -> Result<ModelPlan, ModelError>;

    /// Builds the configured model and hands it to `job`.
    fn with_model<W: WithModel>(
        config: &Self::Config,
        schema: &ValidSchema,
        layout: &TableLayout,
        device: &Device,
        job: W,
    ) -> Result<W::Out, W::Error>;
}

/// Reads the `[model]` table `model` (as parsed from `text`, the whole file, which `file`
/// names in errors) with its `type`: every error names the line and the key, and the
/// table's own errors keep their lines (it is read on its own once its `type` is known).
pub fn read_model_table<R: Registry>(
    text: &str,
    file: &str,
    model: Option<toml::Spanned<toml::de::DeValue<'_>>>,
) -> Result<R::Config, ModelError> {
    let config = |message: String| ModelError::Config {
        file: file.to_string(),
        message,
    };
    let at_span = |span: std::ops::Range<usize>, message: String| {
        config(mtl_features::toml_span_line(text, span, &message))
    };
    let Some(model) = model else {
        return Err(config(format!(
            "no [model] table: add one with `type` = one of {}",
            R::KINDS.join(", ")
        )));
    };
    let model_span = model.span();
    let toml::de::DeValue::Table(mut model_table) = model.into_inner() else {
        return Err(at_span(
            model_span,
            "`model` must be a table such as [model]".into(),
        ));
    };
    let kind = match model_table.remove("type") {
        Some(kind) => match kind.get_ref().as_str() {
            Some(k) if R::KINDS.contains(&k) => k.to_string(),
            _ => {
                return Err(at_span(
                    kind.span(),
                    format!(
                        "unknown model `type` {}: expected one of {}",
                        text.get(kind.span()).unwrap_or("?"),
                        R::KINDS.join(", ")
                    ),
                ));
            }
        },
        None => {
            return Err(at_span(
                model_span,
                format!("[model] has no `type`: expected one of {}", R::KINDS.join(", ")),
            ));
        }
    };
    R::parse(
        &kind,
        toml::de::ValueDeserializer::from(toml::Spanned::new(
            model_span,
            toml::de::DeValue::Table(model_table),
        )),
    )
    .map_err(|e| config(mtl_features::toml_error_line(text, &e)))
}

/// Reads the `[model]` table of a whole config file's text (the other tables are not read).
pub fn model_of_document<R: Registry>(text: &str, file: &str) -> Result<R::Config, ModelError> {
    let doc = toml::de::DeTable::parse(text).map_err(|e| ModelError::Config {
        file: file.to_string(),
        message: mtl_features::toml_error_line(text, &e),
    })?;
    let mut table = doc.into_inner();
    read_model_table::<R>(text, file, table.remove("model"))
}

/// Reads a `[model]` table given as TOML text, `type` key included — what tests, benches and
/// `mtl models` hold — with the run config's own parser, so keys are checked the same way
/// (line numbers in errors count from the table's first line plus three).
pub fn parse_model<R: Registry>(table: &str) -> Result<R::Config, ModelError> {
    let text = format!("schema = \"-\"\n[data]\ntrain = \"-\"\n[model]\n{table}\n");
    model_of_document::<R>(&text, "[model]")
}

/// The `[model]` table of model type `kind`'s example config ([`Registry::about`]), read;
/// `None` for a type the registry lacks.
pub fn example_model<R: Registry>(kind: &str) -> Option<Result<R::Config, ModelError>> {
    let (_, example) = R::about(kind)?;
    Some(model_of_document::<R>(
        example,
        &format!("the {kind} example config"),
    ))
}

/// The lines of a config text's `[model]` table, header excluded: from the line after
/// `[model]` to the next table's header (or the end).
pub fn model_section(config: &str) -> &str {
    let Some(start) = config.find("\n[model]\n").map(|i| i + "\n[model]\n".len()) else {
        return "";
    };
    let rest = &config[start..];
    let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

/// Serialises a model config as its table with `type = kind` added (the run directory's
/// `config.toml` form).
pub fn serialize_tagged<T: Serialize, S: serde::Serializer>(
    kind: &str,
    config: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut table = toml::Table::try_from(config).map_err(serde::ser::Error::custom)?;
    table.insert("type".into(), toml::Value::String(kind.into()));
    table.serialize(serializer)
}

/// Declares a model registry: an enum of model configs, one variant per model type, and a
/// unit type implementing [`Registry`] over it. Each line names the `type`, the variant, a
/// config type implementing [`ModelBuilder`](crate::ModelBuilder) and the text of its
/// example run config:
///
/// ```ignore
/// mtl_layers::registry! {
///     /// Every model mtl ships.
///     pub enum ModelConfig in Models {
///         "esmm" => Esmm(mtl_esmm::EsmmConfig) from include_str!("../../../configs/esmm-example.toml"),
///         "mmoe" => Mmoe(mtl_mmoe::MmoeConfig) from include_str!("../../../configs/mmoe-example.toml"),
///     }
/// }
/// ```
#[macro_export]
macro_rules! registry {
    (
        $(#[$meta:meta])*
        $vis:vis enum $config:ident in $registry:ident {
            $( $kind:literal => $variant:ident($ty:ty) from $example:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis enum $config {
            $(
                #[doc = concat!("`type = \"", $kind, "\"`")]
                $variant($ty),
            )+
        }

        impl $crate::__private::serde::Serialize for $config {
            fn serialize<S: $crate::__private::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $( Self::$variant(c) => $crate::registry::serialize_tagged($kind, c, s), )+
                }
            }
        }

        #[doc = concat!("The registry of [`", stringify!($config), "`]'s model types.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        $vis struct $registry;

        impl $crate::registry::Registry for $registry {
            type Config = $config;
            const KINDS: &'static [&'static str] = &[$($kind),+];

            fn kind(config: &$config) -> &'static str {
                match config {
                    $( $config::$variant(_) => $kind, )+
                }
            }

            fn about(kind: &str) -> Option<(&'static str, &'static str)> {
                use $crate::ModelBuilder;
                match kind {
                    $( $kind => Some((<$ty as ModelBuilder>::ABOUT, $example)), )+
                    _ => None,
                }
            }

            fn parse(
                kind: &str,
                table: $crate::__private::toml::de::ValueDeserializer<'_>,
            ) -> Result<$config, $crate::__private::toml::de::Error> {
                match kind {
                    $( $kind => Ok($config::$variant(
                        <$ty as $crate::__private::serde::Deserialize>::deserialize(table)?,
                    )), )+
                    other => Err(<$crate::__private::toml::de::Error as $crate::__private::serde::de::Error>::custom(
                        format!("unknown model type `{other}`"),
                    )),
                }
            }

            fn plan(
                config: &$config,
                schema: &$crate::__private::mtl_features::ValidSchema,
            ) -> Result<$crate::ModelPlan, $crate::ModelError> {
                match config {
                    $( $config::$variant(c) => $crate::ModelBuilder::plan(c, schema), )+
                }
            }

            fn with_model<W: $crate::registry::WithModel>(
                config: &$config,
                schema: &$crate::__private::mtl_features::ValidSchema,
                layout: &$crate::__private::mtl_features::TableLayout,
                device: &$crate::__private::Device,
                job: W,
            ) -> Result<W::Out, W::Error> {
                match config {
                    $( $config::$variant(c) => job.run(
                        $crate::ModelBuilder::init(c, schema, layout, device)?,
                    ), )+
                }
            }
        }
    };
}
