//! A symbolic batch axis from two fixed-batch captures of one model.
//!
//! burn's exporter (burn-onnx 0.22) makes the batch axis symbolic only for graphs with one
//! batched input and no slice of a batched tensor (it rejects two batched inputs as
//! "ambiguous", and every sequence field is a slice). Its fixed-batch export always works.
//! Captured at two batch sizes, the same model gives the same nodes; where the two graphs
//! differ is exactly what depends on the batch, and in our models that is only
//! - a `Reshape`'s target shape, one entry proportional to the batch (`[b·k, …]`): the
//!   entry becomes `-1`, which ONNX infers from the element count;
//! - a `Slice`'s `ends` over a whole batched axis (start 0, end = batch): the end becomes
//!   `i64::MAX`, "to the end" in ONNX;
//! - the inputs' and outputs' first axis: named `batch`.
//!
//! Anything else that differs (another operation's operand, a node's attribute, an entry
//! not proportional to the batch) is refused with a reason, and the caller keeps a fixed
//! batch. The intermediate shapes (`value_info`) are dropped: ONNX Runtime infers them.

use std::collections::HashMap;

use onnx_ir::{GraphProto, Message, ModelProto, NodeProto, TensorProto, ValueInfoProto};

/// ONNX element types of the integer constants rewritten here.
const INT64: i32 = 7;
const INT32: i32 = 6;

/// The graph captured at `a_rows` rows (`a`) with its batch axis made symbolic, told apart
/// from the capture at `b_rows` rows (`b`); why not, when some difference is not one of the
/// forms above.
pub(super) fn unify(a: &[u8], a_rows: usize, b: &[u8], b_rows: usize) -> Result<Vec<u8>, String> {
    let rows = (a_rows as i64, b_rows as i64);
    let mut model = ModelProto::parse_from_bytes(a).map_err(|e| e.to_string())?;
    let other = ModelProto::parse_from_bytes(b).map_err(|e| e.to_string())?;
    let graph = model.graph.mut_or_insert_default();
    let theirs = other.graph.get_or_default();
    same_nodes(graph, theirs)?;
    if graph.initializer.len() != theirs.initializer.len() {
        return Err("the captures hold different numbers of constants".into());
    }
    // which operand of which operation each constant is
    let mut uses: HashMap<&str, Vec<(&NodeProto, usize)>> = HashMap::new();
    for node in &graph.node {
        for (k, input) in node.input.iter().enumerate() {
            uses.entry(input.as_str()).or_default().push((node, k));
        }
    }
    let mut rewritten = Vec::new();
    for (index, (mine, their)) in graph.initializer.iter().zip(&theirs.initializer).enumerate() {
        let mut renamed = their.clone();
        renamed.name.clone_from(&mine.name);
        if *mine == renamed {
            continue;
        }
        let used = uses
            .get(mine.name.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let starts = |node: &NodeProto| {
            let name = node.input.get(1)?;
            graph.initializer.iter().find(|t| &t.name == name).and_then(ints)
        };
        let values = batch_free(mine, their, used, rows, starts)?;
        rewritten.push((index, values));
    }
    for (index, values) in rewritten {
        set_ints(&mut graph.initializer[index], &values);
    }
    for (mine, their) in graph.input.iter_mut().zip(&theirs.input) {
        name_batch_axis(mine, their, rows)?;
    }
    for (mine, their) in graph.output.iter_mut().zip(&theirs.output) {
        name_batch_axis(mine, their, rows)?;
    }
    graph.value_info.clear();
    model.write_to_bytes().map_err(|e| e.to_string())
}

/// Both captures run the same operations on the same operands, with the same attributes.
/// Values are named by position (graph inputs, constants, then each operation's outputs),
/// as the exporter numbers its tensors afresh in each capture.
fn same_nodes(mine: &GraphProto, theirs: &GraphProto) -> Result<(), String> {
    let (a_nodes, b_nodes) = (&mine.node, &theirs.node);
    if a_nodes.len() != b_nodes.len() || mine.input.len() != theirs.input.len() {
        return Err(format!(
            "the captures have {} and {} operations",
            a_nodes.len(),
            b_nodes.len()
        ));
    }
    // their name → mine
    let mut names: HashMap<&str, &str> = HashMap::new();
    let inputs = mine
        .input
        .iter()
        .zip(&theirs.input)
        .map(|(a, b)| (&a.name, &b.name));
    let constants = mine
        .initializer
        .iter()
        .zip(&theirs.initializer)
        .map(|(a, b)| (&a.name, &b.name));
    for (a, b) in inputs.chain(constants) {
        names.insert(b, a);
    }
    for (k, (a, b)) in a_nodes.iter().zip(b_nodes).enumerate() {
        let same_operands = a.input.len() == b.input.len()
            && a.input
                .iter()
                .zip(&b.input)
                .all(|(x, y)| (x.is_empty() && y.is_empty()) || names.get(y.as_str()) == Some(&x.as_str()));
        if a.op_type != b.op_type || !same_operands || a.output.len() != b.output.len() {
            return Err(format!(
                "operation {k} ({}) differs between the captures",
                a.op_type
            ));
        }
        if a.attribute != b.attribute {
            return Err(format!(
                "operation {k} ({}) has an attribute that depends on the batch",
                a.op_type
            ));
        }
        for (x, y) in a.output.iter().zip(&b.output) {
            names.insert(y, x);
        }
    }
    let same_outputs = mine.output.len() == theirs.output.len()
        && mine
            .output
            .iter()
            .zip(&theirs.output)
            .all(|(a, b)| names.get(b.name.as_str()) == Some(&a.name.as_str()));
    if !same_outputs {
        return Err("the captures' outputs differ".into());
    }
    Ok(())
}

/// The batch-free values of constant `mine` (which reads `theirs` in the other capture),
/// from the operands it is (`used`): a `Reshape`'s shape or a `Slice`'s ends (`starts` gives
/// a `Slice` node's starts).
fn batch_free(
    mine: &TensorProto,
    theirs: &TensorProto,
    used: &[(&NodeProto, usize)],
    rows: (i64, i64),
    starts: impl Fn(&NodeProto) -> Option<Vec<i64>>,
) -> Result<Vec<i64>, String> {
    let name = &mine.name;
    let depends = || format!("constant {name} depends on the batch");
    let (Some(a), Some(b)) = (ints(mine), ints(theirs)) else {
        return Err(format!("{} (not an integer list)", depends()));
    };
    if a.len() != b.len() || used.is_empty() {
        return Err(depends());
    }
    let differing: Vec<usize> = (0..a.len()).filter(|&k| a[k] != b[k]).collect();
    fn role<'a>((node, k): &(&'a NodeProto, usize)) -> (&'a str, usize) {
        (node.op_type.as_str(), *k)
    }
    let mut out = a.clone();
    match role(&used[0]) {
        ("Reshape", 1) if used.iter().all(|u| role(u) == ("Reshape", 1)) => {
            // one entry `b·k` (k whole) among positive sizes: ONNX's `-1` infers it
            let proportional = |k: usize| a[k] * rows.1 == b[k] * rows.0 && a[k] % rows.0 == 0;
            if differing.len() != 1 || !proportional(differing[0]) || a.iter().any(|&v| v <= 0) {
                return Err(format!("{}: a reshape to {a:?} / {b:?}", depends()));
            }
            out[differing[0]] = -1;
        }
        ("Slice", 2) if used.iter().all(|u| role(u) == ("Slice", 2)) => {
            // a slice over the whole batched axis: from 0 to the end
            for &k in &differing {
                let whole = used
                    .iter()
                    .all(|(node, _)| starts(node).is_some_and(|s| s.get(k) == Some(&0)));
                if (a[k], b[k]) != rows || !whole {
                    return Err(format!("{}: a slice ending at {a:?} / {b:?}", depends()));
                }
                out[k] = i64::MAX;
            }
        }
        (op, k) => return Err(format!("{} (operand {k} of a {op})", depends())),
    }
    Ok(out)
}

/// Names `batch` the axis of graph input or output `mine` that is `rows.0` long there and
/// `rows.1` in the other capture (`theirs`).
fn name_batch_axis(
    mine: &mut ValueInfoProto,
    theirs: &ValueInfoProto,
    rows: (i64, i64),
) -> Result<(), String> {
    let shape = |v: &ValueInfoProto| {
        v.type_
            .tensor_type()
            .shape
            .dim
            .iter()
            .map(|d| d.dim_value())
            .collect::<Vec<_>>()
    };
    let theirs = shape(theirs);
    let name = mine.name.clone();
    let tensor = mine.type_.mut_or_insert_default().mut_tensor_type();
    let dims = &mut tensor.shape.mut_or_insert_default().dim;
    if dims.len() != theirs.len() {
        return Err(format!("{name} has a different rank in each capture"));
    }
    for (dim, &their) in dims.iter_mut().zip(&theirs) {
        let own = dim.dim_value();
        if own == their {
            continue;
        }
        if (own, their) != rows {
            return Err(format!("{name} has an axis of {own} / {their}"));
        }
        dim.set_dim_param("batch".into());
    }
    Ok(())
}

/// An integer constant's values (int64 or int32, raw or listed).
fn ints(t: &TensorProto) -> Option<Vec<i64>> {
    let raw = &t.raw_data;
    match t.data_type {
        INT64 if !raw.is_empty() => Some(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        INT64 => Some(t.int64_data.clone()),
        INT32 if !raw.is_empty() => Some(
            raw.chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))))
                .collect(),
        ),
        INT32 => Some(t.int32_data.iter().map(|&v| i64::from(v)).collect()),
        _ => None,
    }
}

/// Writes `values` into integer constant `t`, in the form it had (an int32 end of
/// `i64::MAX` saturates to `i32::MAX`, still "to the end").
fn set_ints(t: &mut TensorProto, values: &[i64]) {
    let narrow = |v: i64| i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX });
    match (t.data_type, t.raw_data.is_empty()) {
        (INT64, false) => {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            t.raw_data = bytes.into();
        }
        (INT64, true) => t.int64_data = values.to_vec(),
        (_, false) => {
            let bytes: Vec<u8> = values.iter().flat_map(|&v| narrow(v).to_le_bytes()).collect();
            t.raw_data = bytes.into();
        }
        (_, true) => t.int32_data = values.iter().map(|&v| narrow(v)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph `x [rows, 4] → Slice(ends) → s [rows, 2] → Reshape(flat) → f [rows·2] →
    /// Reshape(shape) → y` (`y` declared `out`), with its constants as int64 raw data (as
    /// burn writes them).
    fn graph(rows: i64, flat: i64, ends: &[i64], out: &[i64]) -> Vec<u8> {
        let constant = |name: &str, values: &[i64]| {
            let mut t = TensorProto::new();
            t.name = name.into();
            t.data_type = INT64;
            t.dims = vec![values.len() as i64];
            t.raw_data = values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into();
            t
        };
        let node = |op: &str, inputs: &[&str], output: &str| {
            let mut n = NodeProto::new();
            n.op_type = op.into();
            n.input = inputs.iter().map(|s| s.to_string()).collect();
            n.output = vec![output.into()];
            n
        };
        let value = |name: &str, dims: &[i64]| {
            let mut v = ValueInfoProto::new();
            v.name = name.into();
            let tensor = v.type_.mut_or_insert_default().mut_tensor_type();
            tensor.elem_type = 1;
            let shape = tensor.shape.mut_or_insert_default();
            for &d in dims {
                shape.dim.push(Default::default());
                shape.dim.last_mut().expect("pushed").set_dim_value(d);
            }
            v
        };
        let mut model = ModelProto::new();
        let g = model.graph.mut_or_insert_default();
        g.node = vec![
            node("Slice", &["x", "starts", "ends", "axes"], "s"),
            node("Reshape", &["s", "flat"], "f"),
            node("Reshape", &["f", "shape"], "y"),
        ];
        g.initializer = vec![
            constant("starts", &[0, 0]),
            constant("ends", ends),
            constant("axes", &[0, 1]),
            constant("flat", &[flat]),
            constant("shape", out),
        ];
        g.input = vec![value("x", &[rows, 4])];
        g.output = vec![value("y", out)];
        g.value_info = vec![value("s", &[rows, 2]), value("f", &[flat])];
        model.write_to_bytes().unwrap()
    }

    fn constant(model: &ModelProto, name: &str) -> Vec<i64> {
        let t = model.graph.initializer.iter().find(|t| t.name == name).unwrap();
        ints(t).unwrap()
    }

    fn dims(v: &ValueInfoProto) -> Vec<String> {
        let shape = &v.type_.tensor_type().shape;
        shape
            .dim
            .iter()
            .map(|d| match d.has_dim_value() {
                true => d.dim_value().to_string(),
                false => d.dim_param().to_string(),
            })
            .collect()
    }

    #[test]
    fn reshapes_infer_the_batch_slices_run_to_the_end_and_the_inputs_name_it() {
        let a = graph(5, 10, &[5, 2], &[5, 2]);
        let b = graph(7, 14, &[7, 2], &[7, 2]);
        let out = ModelProto::parse_from_bytes(&unify(&a, 5, &b, 7).unwrap()).unwrap();
        assert_eq!(constant(&out, "flat"), [-1]);
        assert_eq!(constant(&out, "shape"), [-1, 2]);
        assert_eq!(constant(&out, "ends"), [i64::MAX, 2]);
        assert_eq!(constant(&out, "starts"), [0, 0]);
        assert_eq!(dims(&out.graph.input[0]), ["batch", "4"]);
        assert_eq!(dims(&out.graph.output[0]), ["batch", "2"]);
        assert!(out.graph.value_info.is_empty());
    }

    #[test]
    fn what_is_not_a_batch_form_is_refused_with_a_reason() {
        let a = graph(5, 10, &[5, 2], &[5, 2]);
        // a reshape entry not proportional to the batch (b + 5)
        let b = graph(7, 12, &[7, 2], &[7, 2]);
        let e = unify(&a, 5, &b, 7).unwrap_err();
        assert!(e.contains("constant flat depends on the batch"), "{e}");
        // a slice that stops short of the batch
        let b = graph(7, 14, &[6, 2], &[7, 2]);
        let e = unify(&a, 5, &b, 7).unwrap_err();
        assert!(e.contains("a slice ending at"), "{e}");
        // another operation in one capture
        let mut other = ModelProto::parse_from_bytes(&graph(7, 14, &[7, 2], &[7, 2])).unwrap();
        other.graph.mut_or_insert_default().node[1].op_type = "Flatten".into();
        let e = unify(&a, 5, &other.write_to_bytes().unwrap(), 7).unwrap_err();
        assert!(e.contains("operation 1 (Reshape) differs"), "{e}");
        // an output axis proportional to the batch but not the batch
        let a = graph(5, 10, &[5, 2], &[10]);
        let b = graph(7, 14, &[7, 2], &[14]);
        let e = unify(&a, 5, &b, 7).unwrap_err();
        assert!(e.contains("y has an axis of 10 / 14"), "{e}");
    }
}
