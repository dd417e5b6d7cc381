//! ONNX export through burn's own exporter (`burn-onnx`, `export` feature): the model's
//! prediction pass is captured at two fixed batch sizes and what differs between the two
//! graphs is made the symbolic batch axis ([`batch_axis`]); the weights are embedded. Beside the `.onnx` file goes `<file>.json`: the inputs in order
//! with their shapes, the outputs in order, and the encoder's schema and fitted state, so
//! that a caller can encode raw values exactly as `mtl predict` does.
//!
//! Inputs, named and in this order, those the schema has: `sparse_ids` `[batch, n_sparse]`
//! int64 (table rows: `offset + id · slots`, as in a batch; see the sidecar's `table_offsets`,
//! `table_slots`), per sequence field `<field>.ids` `[batch, max_len]` int64, then per
//! sequence field `<field>.mask` `[batch, max_len]` float (1 where an id is present), and
//! `dense` `[batch, n_dense]` float (already standardised).
//! Outputs, named after the model's: one `[batch]` float tensor each. (burn's exporter names
//! them `tensor_N` and takes int32 ids: the graph is renamed after export, the ids cast inside.)

use std::path::Path;

use burn::tensor::{Device, Int, Tensor};
use burn_onnx::export::OnnxExporter;
use mtl_eval::{EvalError, ModelDir, record_err};
use mtl_features::{BatchTensors, SequenceTensors, ValidSchema};
use mtl_layers::MultiTaskModel;
use mtl_layers::{Registry, WithModel};
use serde_json::json;

use crate::ServeError;

mod batch_axis;

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The model's outputs, in ONNX output order.
    pub outputs: Vec<String>,
    /// The inputs, in ONNX input order.
    pub inputs: Vec<String>,
    /// Bytes of the `.onnx` file.
    pub bytes: usize,
    /// The fixed batch size (rows per call), or `None` when the batch axis is symbolic.
    pub batch: Option<usize>,
    /// Why the batch axis could not be made symbolic, when it was tried and failed.
    pub symbolic_failed: Option<String>,
}

/// One graph input: its name, width, and whether it holds ids.
struct GraphInput {
    name: &'static str,
    width: usize,
    ids: bool,
}

impl GraphInput {
    /// The labels' stand-in (see [`batch`]): one `[1, 1]` value the model never reads.
    fn is_stand_in(&self) -> bool {
        self.name == "unused"
    }
}

/// The graph inputs of `schema`, in graph order (id inputs, then float inputs): the one list
/// both the captured tensors and the `.json` beside the graph follow.
fn graph_inputs(schema: &ValidSchema) -> Vec<GraphInput> {
    let width: usize = schema.schema.sequence.iter().map(|s| s.max_len).sum();
    let input = |name, width, ids| GraphInput { name, width, ids };
    let mut out = Vec::new();
    if schema.n_sparse() > 0 {
        out.push(input("sparse_ids", schema.n_sparse(), true));
    }
    if width > 0 {
        out.push(input("sequence_ids", width, true));
        out.push(input("sequence_mask", width, false));
    }
    if schema.n_dense() > 0 {
        out.push(input("dense", schema.n_dense(), false));
    }
    if width == 0 && schema.n_dense() == 0 {
        // a batch holds labels, which predictions never read: a float input stands in
        out.push(input("unused", 1, false));
    }
    out
}

/// One input of the exported graph as a caller feeds it: a whole captured input, or one
/// sequence field's columns of `sequence_ids` / `sequence_mask` (`<field>.ids`,
/// `<field>.mask`), joined inside the graph.
struct Feed {
    name: String,
    /// The captured input it is (part of).
    of: &'static str,
    /// Its columns within that input.
    columns: std::ops::Range<usize>,
    ids: bool,
}

/// The exported graph's inputs, in order: the captured inputs, each sequence input split
/// into one per field.
fn feeds(schema: &ValidSchema) -> Vec<Feed> {
    let mut out = Vec::new();
    for input in graph_inputs(schema) {
        let part = match input.name {
            "sequence_ids" => "ids",
            "sequence_mask" => "mask",
            _ => {
                let (of, ids) = (input.name, input.ids);
                out.push(Feed {
                    name: of.to_string(),
                    of,
                    columns: 0..input.width,
                    ids,
                });
                continue;
            }
        };
        let mut start = 0;
        for field in &schema.schema.sequence {
            out.push(Feed {
                name: format!("{}.{part}", field.name),
                of: input.name,
                columns: start..start + field.max_len,
                ids: input.ids,
            });
            start += field.max_len;
        }
    }
    out
}

/// The graph inputs of a batch of `b` rows (zeros, a mask of ones; ids 0 are valid rows of
/// every table).
fn inputs(schema: &ValidSchema, b: usize, device: &Device) -> (Vec<Tensor<2, Int>>, Vec<Tensor<2>>) {
    let mut ints = Vec::new();
    let mut floats = Vec::new();
    for input in graph_inputs(schema) {
        let rows = if input.is_stand_in() { 1 } else { b };
        match (input.ids, input.name) {
            (true, _) => ints.push(Tensor::zeros([rows, input.width], device)),
            (false, "sequence_mask") => floats.push(Tensor::ones([rows, input.width], device)),
            (false, _) => floats.push(Tensor::zeros([rows, input.width], device)),
        }
    }
    (ints, floats)
}

/// The batch a model sees for the graph inputs.
fn batch(schema: &ValidSchema, ints: Vec<Tensor<2, Int>>, floats: Vec<Tensor<2>>) -> BatchTensors {
    let mut ints = ints.into_iter();
    let mut floats = floats.into_iter();
    let sparse_ids = (schema.n_sparse() > 0).then(|| ints.next().expect("sparse ids input"));
    let sequence = (!schema.schema.sequence.is_empty()).then(|| SequenceTensors {
        ids: ints.next().expect("sequence ids input"),
        mask: floats.next().expect("sequence mask input"),
    });
    let dense = (schema.n_dense() > 0).then(|| floats.next().expect("dense input"));
    // predictions never read labels, but a batch holds them: a float input stands in (a
    // tensor created here would have a batch size the exporter cannot tell from a constant,
    // and it cannot lower a cast); without dense or sequence fields, an input of its own
    let labels = dense
        .clone()
        .or_else(|| sequence.as_ref().map(|s| s.mask.clone()))
        .or_else(|| floats.next())
        .expect("a float input");
    let rows = sparse_ids
        .as_ref()
        .map(|t| t.dims()[0])
        .or_else(|| sequence.as_ref().map(|s| s.ids.dims()[0]))
        .unwrap_or(labels.dims()[0]);
    BatchTensors {
        rows,
        sparse_ids,
        sequence,
        dense,
        labels,
        weights: None,
    }
}

struct Export<'a> {
    dir: &'a Path,
    schema: &'a ValidSchema,
    batch: Option<usize>,
}

/// An exported graph.
struct Graph {
    outputs: Vec<String>,
    bytes: Vec<u8>,
    /// The fixed batch size, when the batch axis is not symbolic.
    batch: Option<usize>,
    /// Why the batch axis could not be made symbolic, if it was tried.
    symbolic_failed: Option<String>,
}

/// The fixed batch when the exporter cannot make the batch axis symbolic and none is asked.
pub const FALLBACK_BATCH: usize = 1024;

/// The two batch sizes the model is captured at to find its batch axis.
const CAPTURES: (usize, usize) = (5, 7);

impl WithModel for Export<'_> {
    type Out = Graph;
    type Error = EvalError;

    fn run<M: MultiTaskModel + 'static>(self, model: M) -> Result<Self::Out, EvalError> {
        let path = self.dir.join("model.bpk");
        let model = model.try_load_file(&path).map_err(record_err(&path))?.valid();
        let specs = model.outputs();
        // an output that re-reports another's prediction (AITM's `purchase_given_click` is
        // `purchase` on the clicked rows) is the same tensor: ONNX needs distinct outputs
        let repeats: Vec<bool> = specs
            .iter()
            .enumerate()
            .map(|(i, o)| specs[..i].iter().any(|e| e.target == o.target))
            .collect();
        let outputs = specs.into_iter().map(|o| o.name).collect();
        let device = Device::flex();
        let schema = self.schema;
        let forward = |m: &M, (ints, floats): (Vec<Tensor<2, Int>>, Vec<Tensor<2>>)| {
            let predictions = m.predict(&batch(schema, ints, floats));
            predictions
                .into_iter()
                .zip(&repeats)
                .map(|(p, &repeat)| if repeat { p.mul_scalar(1.0) } else { p })
                .collect::<Vec<_>>()
        };
        let exporter = OnnxExporter::new();
        let capture = |rows: usize| {
            // the experts' later layers batch first: burn's exporter cannot lower an axis swap
            mtl_layers::with_experts_batch_first(|| {
                exporter.export(&model, inputs(schema, rows, &device), forward)
            })
            .map(|onnx| onnx.into_bytes())
            .map_err(|e| {
                EvalError::Backend(format!(
                    "burn's ONNX exporter (burn-onnx 0.22) cannot express this model: {e}"
                ))
            })
        };
        let mut symbolic_failed = None;
        if self.batch.is_none() {
            // the same model captured at two batch sizes: what differs is the batch
            let (a, b) = CAPTURES;
            match batch_axis::unify(&capture(a)?, a, &capture(b)?, b) {
                Ok(bytes) => {
                    return Ok(Graph {
                        outputs,
                        bytes,
                        batch: None,
                        symbolic_failed: None,
                    });
                }
                Err(e) => symbolic_failed = Some(e),
            }
        }
        // a fixed batch: every shape is static, which the exporter always resolves
        let n = self.batch.unwrap_or(FALLBACK_BATCH);
        let bytes = capture(n)?;
        Ok(Graph {
            outputs,
            bytes,
            batch: Some(n),
            symbolic_failed,
        })
    }
}

/// ONNX's element type codes (`TensorProto.DataType`).
const ONNX_INT64: i32 = 7;

/// An ONNX node `op` from `inputs` to `output`, with integer attribute `attribute`.
fn node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    output: String,
    attribute: (&str, i64),
) -> onnx_ir::NodeProto {
    use onnx_ir::{AttributeProto, AttributeType, NodeProto};
    let mut value = AttributeProto::new();
    value.name = attribute.0.into();
    value.type_ = AttributeType::INT.into();
    value.i = attribute.1;
    let mut node = NodeProto::new();
    node.name = name;
    node.op_type = op.into();
    node.input = inputs;
    node.output.push(output);
    node.attribute.push(value);
    node
}

/// Gives the graph the inputs `feeds` (burn's exporter takes `inputs`, named `tensor_N`) and
/// names its outputs `outputs`: ids are int64, ONNX Runtime's convention (an id input of
/// another integer type gets a `Cast` to that type in front of the nodes that read it), and a
/// captured input fed in parts (one per sequence field) is their `Concat`.
fn name_graph(
    bytes: &[u8],
    inputs: &[GraphInput],
    feeds: &[Feed],
    outputs: &[String],
) -> Result<Vec<u8>, String> {
    use onnx_ir::{Message, ModelProto};
    let mut model = ModelProto::parse_from_bytes(bytes).map_err(|e| e.to_string())?;
    let graph = model.graph.mut_or_insert_default();
    if graph.input.len() != inputs.len() || graph.output.len() != outputs.len() {
        return Err(format!(
            "the graph has {} inputs and {} outputs, the model {} and {}",
            graph.input.len(),
            graph.output.len(),
            inputs.len(),
            outputs.len()
        ));
    }
    let mut renames: Vec<(String, String)> = Vec::new();
    let mut nodes = Vec::new();
    let mut values = Vec::new();
    for (value, input) in graph.input.iter().zip(inputs) {
        let internal = value.name.clone();
        let own = value.type_.tensor_type().elem_type;
        let cast = input.ids && own != ONNX_INT64;
        let parts: Vec<&Feed> = feeds.iter().filter(|f| f.of == input.name).collect();
        for part in &parts {
            let mut fed = value.clone();
            fed.name.clone_from(&part.name);
            let tensor = fed.type_.mut_or_insert_default().mut_tensor_type();
            if cast {
                tensor.elem_type = ONNX_INT64;
            }
            if let Some(width) = tensor.shape.mut_or_insert_default().dim.get_mut(1) {
                width.set_dim_value(part.columns.len() as i64);
            }
            values.push(fed);
        }
        let names: Vec<String> = parts.iter().map(|p| p.name.clone()).collect();
        let source = match names.as_slice() {
            [whole] if whole == input.name => whole.clone(),
            _ => {
                let joined = if cast {
                    format!("{}_joined", input.name)
                } else {
                    internal.clone()
                };
                let name = format!("{}_concat", input.name);
                nodes.push(node("Concat", name, names, joined.clone(), ("axis", 1)));
                joined
            }
        };
        if cast {
            let name = format!("{}_cast", input.name);
            nodes.push(node("Cast", name, vec![source], internal, ("to", i64::from(own))));
        } else if source != internal {
            renames.push((internal, source));
        }
    }
    graph.input = values;
    for (value, name) in graph.output.iter_mut().zip(outputs) {
        renames.push((std::mem::replace(&mut value.name, name.clone()), name.clone()));
    }
    let rename = |n: &mut String| {
        if let Some((_, new)) = renames.iter().find(|(old, _)| old == n) {
            *n = new.clone();
        }
    };
    for node in &mut graph.node {
        node.input
            .iter_mut()
            .chain(node.output.iter_mut())
            .for_each(rename);
    }
    graph.value_info.iter_mut().for_each(|v| rename(&mut v.name));
    // the joins and casts first: nodes are listed in the order they run
    graph.node.splice(0..0, nodes);
    model.write_to_bytes().map_err(|e| e.to_string())
}

/// Exports the model in `dir` to `out` (ONNX) and `out` + `.json` (inputs, outputs, encoder).
/// The batch axis is symbolic, or fixed at `batch` rows when asked; when the exporter cannot
/// make it symbolic, it is fixed at [`FALLBACK_BATCH`] (and [`Exported`] says why).
pub fn export_onnx<R: Registry>(
    dir: &Path,
    out: &Path,
    batch: Option<usize>,
    allow_unfinished: bool,
) -> Result<Exported, ServeError> {
    if batch.is_some_and(|b| !(1..=1 << 20).contains(&b)) {
        return Err(ServeError::Option {
            option: "batch",
            value: batch.unwrap_or(0).to_string(),
            message: "must be in 1..=1048576".into(),
        });
    }
    let model = ModelDir::<R>::open_allowing(dir, allow_unfinished)?;
    let mut json_path = out.as_os_str().to_owned();
    json_path.push(".json");
    let json_path = std::path::PathBuf::from(json_path);
    // both outputs checked before either is written; neither may be a file of a model directory
    for path in [out, json_path.as_path()] {
        mtl_features::check_output(path, &[]).map_err(EvalError::from)?;
    }
    let schema = &model.schema;
    let job = Export { dir, schema, batch };
    let graph = R::with_model(&model.model, schema, model.encoder.layout(), &Device::flex(), job)?;
    let Graph {
        outputs,
        bytes,
        batch,
        symbolic_failed,
    } = graph;
    let feeds = feeds(schema);
    let bytes = name_graph(&bytes, &graph_inputs(schema), &feeds, &outputs)
        .map_err(|e| EvalError::Backend(format!("naming the exported graph's inputs and outputs: {e}")))?;
    let rows = batch.map_or(json!("batch"), |n| json!(n));
    // each input with the columns of the encoder's block it takes (`of`: `sparse_ids`,
    // `sequence_ids`, `sequence_mask`, `dense`)
    let inputs: Vec<serde_json::Value> = feeds
        .iter()
        .map(|f| {
            let dtype = if f.ids { "int64" } else { "float32" };
            let columns = [f.columns.start, f.columns.end];
            if f.of == "unused" {
                json!({"name": f.name, "shape": [1, 1], "dtype": dtype, "of": f.of, "columns": columns, "note": "not read by the model: any value"})
            } else {
                json!({"name": f.name, "shape": [rows, f.columns.len()], "dtype": dtype, "of": f.of, "columns": columns})
            }
        })
        .collect();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let features: serde_json::Value =
        serde_json::from_str(&read("features.json")).unwrap_or(serde_json::Value::Null);
    let sidecar = json!({
        "model_id": crate::model_id(dir)?,
        "inputs": inputs,
        "outputs": outputs,
        "batch": batch,
        "why_fixed_batch": symbolic_failed,
        "table_offsets": model.encoder.layout().offset,
        // rows per id of each id field (a field wider than the table owns consecutive rows):
        // id `v` of field `f` reads rows `table_offsets[f] + v · table_slots[f] …`
        "table_slots": (0..model.encoder.layout().offset.len())
            .map(|f| model.encoder.layout().slots_of(f))
            .collect::<Vec<_>>(),
        "schema": read("schema.toml"),
        "features": features,
        // the graph's outputs are uncalibrated: apply these maps to them as `mtl predict` does
        "calibration": model.calibration,
    });
    mtl_features::atomic_write(out, &bytes).map_err(EvalError::from)?;
    if let Err(e) =
        mtl_features::atomic_write(&json_path, &serde_json::to_vec_pretty(&sidecar).expect("JSON"))
    {
        // a graph without its sidecar is not left behind
        let _ = std::fs::remove_file(out);
        return Err(EvalError::from(e).into());
    }
    Ok(Exported {
        outputs,
        inputs: inputs
            .iter()
            .map(|i| i["name"].as_str().unwrap_or("").to_string())
            .collect(),
        bytes: bytes.len(),
        batch,
        symbolic_failed,
    })
}
