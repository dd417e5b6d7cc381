//! MMOE, OMoE and Shared-Bottom: gates, the one-expert equivalence, mixed heads and
//! torch-rechub's parameter counts.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use mtl_features::{Encoder, Schema, StateFitter};
use mtl_layers::ModelBuilder;
use mtl_layers::{MlpSpec, MultiTaskModel, trainable_params};
use mtl_mmoe::{MmoeConfig, SharedBottom, TaskConfig};

mod common;

use common::{data, schema};

fn tasks() -> Vec<TaskConfig> {
    vec![TaskConfig::new("click"), TaskConfig::new("dwell")]
}

fn v<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn gates_are_distributions_over_experts() {
    let device = Device::flex();
    device.seed(5);
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let model = MmoeConfig::new(3, MlpSpec::new([8]), MlpSpec::new([4]), tasks())
        .init(&s, enc.layout(), &device)
        .unwrap();
    let batch = data(17).batch(&(0..17).collect::<Vec<_>>(), enc.layout(), &device);
    let (logits, gates) = model.forward_with_gates(&batch);
    assert_eq!(logits.len(), 2);
    assert_eq!(gates.len(), 2);
    for g in &gates {
        assert_eq!(g.dims(), [17, 3]);
        let w = v(g.clone());
        assert!(w.iter().all(|x| *x >= 0.0));
        for row in w.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        }
    }
    // two gates, two different mixtures
    assert_ne!(v(gates[0].clone()), v(gates[1].clone()));
    // binary head is a probability, regression head is the raw tower output
    let preds = model.predict(&batch);
    assert!(v(preds[0].clone()).iter().all(|p| *p > 0.0 && *p < 1.0));
    assert_eq!(v(preds[1].clone()), v(logits[1].clone()));
}

#[test]
fn omoe_shares_one_gate_across_tasks() {
    let device = Device::flex();
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let model = MmoeConfig::new(4, MlpSpec::new([8]), MlpSpec::new([4]), tasks())
        .one_gate()
        .init(&s, enc.layout(), &device)
        .unwrap();
    assert_eq!(model.gates.len(), 1);
    let batch = data(9).batch(&(0..9).collect::<Vec<_>>(), enc.layout(), &device);
    let (_, gates) = model.forward_with_gates(&batch);
    assert_eq!(v(gates[0].clone()), v(gates[1].clone()));
}

#[test]
fn one_expert_mmoe_is_shared_bottom_with_that_expert() {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    for device in [Device::flex(), Device::flex().autodiff()] {
        let mmoe = MmoeConfig::new(1, MlpSpec::new([8, 6]), MlpSpec::new([4]), tasks())
            .init(&s, enc.layout(), &device)
            .unwrap();
        let bottom = SharedBottom {
            input: mmoe.input.clone(),
            bottom: mmoe.experts.expert(0),
            towers: mmoe.towers.clone(),
            tasks: mmoe.tasks.clone(),
            plan: mmoe.plan.clone(),
        };
        let batch = data(12).batch(&(0..12).collect::<Vec<_>>(), enc.layout(), &device);
        let a = mmoe.forward(&batch);
        let b = bottom.forward(&batch);
        for t in 0..2 {
            let (x, y) = (v(a.predictions[t].clone()), v(b.predictions[t].clone()));
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() < 1e-5, "task {t}: {p} vs {q}");
            }
            let (lx, ly) = (
                a.losses[t].clone().into_scalar::<f32>(),
                b.losses[t].clone().into_scalar::<f32>(),
            );
            assert!((lx - ly).abs() < 1e-5);
        }
    }
}

#[test]
fn parameter_counts_match_torch_rechub() {
    let vocab = [
        100000, 50000, 20000, 5000, 1000, 500, 100, 50, 20, 10, 100000, 30000, 10000, 2000, 1000, 300, 100,
        40, 20, 10,
    ];
    let mut text = String::from("embed_dim = 16\n");
    for (k, size) in vocab.iter().enumerate() {
        text += &format!("[[sparse]]\nname = \"f{k}\"\nvocab_size = {size}\n");
    }
    text += "[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n";
    let s = Schema::from_toml_str(&text, "peer").unwrap();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let device = Device::flex();
    let two = || vec![TaskConfig::new("click"), TaskConfig::new("purchase")];
    let example = MmoeConfig::new(8, MlpSpec::new([16]), MlpSpec::new([8]), two())
        .init(&s, enc.layout(), &device)
        .unwrap();
    assert_eq!(trainable_params(&example), 5_169_234);
    assert_eq!(trainable_params(&example.experts.expert(0)), 5_168);
    assert_eq!(trainable_params(&example.experts), 8 * 5_168);
    assert_eq!(trainable_params(&example.gates[0]), 2_584);
    assert_eq!(trainable_params(&example.towers[0]), 161);
    let large = MmoeConfig::new(8, MlpSpec::new([256, 128]), MlpSpec::new([64]), two())
        .init(&s, enc.layout(), &device)
        .unwrap();
    assert_eq!(trainable_params(&large), 6_071_186);
    let omoe = MmoeConfig::new(8, MlpSpec::new([16]), MlpSpec::new([8]), two())
        .one_gate()
        .init(&s, enc.layout(), &device)
        .unwrap();
    assert_eq!(trainable_params(&omoe), 5_169_234 - 2_584);
    assert!(example.num_params() > 5_169_234);
}

#[test]
fn bad_task_config_is_named() {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let err = MmoeConfig::new(
        2,
        MlpSpec::new([4]),
        MlpSpec::new([4]),
        vec![TaskConfig::new("click"), TaskConfig::new("buy")],
    )
    .init(&s, enc.layout(), &Device::flex())
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model.tasks[1].label") && err.contains("buy"),
        "{err}"
    );
    let err = MmoeConfig::new(0, MlpSpec::new([4]), MlpSpec::new([4]), tasks())
        .init(&s, enc.layout(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.n_experts"), "{err}");
}

/// Experts in groups (`expert_groups`): the model is `y_t = h_t( Σ_k g^t_k(x) f_k(x) )` over
/// all of them, worked out here from each expert's own MLP, its gates and towers — with
/// batch statistics (training) and running ones; the gates name every expert.
#[test]
fn grouped_experts_mix_every_experts_mlp() {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    for device in [Device::flex().autodiff(), Device::flex()] {
        device.seed(11);
        let mut config = MmoeConfig::new(6, MlpSpec::new([8, 5]), MlpSpec::new([4]), tasks());
        config.expert_groups = 3;
        let model = config.init(&s, enc.layout(), &device).unwrap();
        assert_eq!((model.n_experts(), model.expert_groups.len()), (6, 2));
        assert!(model.groups().all(|g| g.len() == 2));
        let batch = data(13).batch(&(0..13).collect::<Vec<_>>(), enc.layout(), &device);
        let (x, _) = model.input.forward_with_fields(&batch); // [13, input]
        let mlps: Vec<_> = model
            .groups()
            .flat_map(|g| (0..g.len()).map(|k| g.expert(k)))
            .collect();
        let f: Vec<Tensor<2>> = mlps.iter().map(|m| m.forward(x.clone())).collect(); // [13, 5] each
        let (logits, gates) = model.forward_with_gates(&batch);
        for t in 0..2 {
            let g = model.gates[t].forward(x.clone()); // [13, 6]
            let mixed = (0..6)
                .map(|k| f[k].clone() * g.clone().slice([0..13, k..k + 1]))
                .reduce(|a, b| a + b)
                .unwrap();
            let want = v(model.towers[t].forward(mixed, None).reshape([13]));
            let got = v(logits[t].clone());
            for (i, (p, q)) in got.iter().zip(&want).enumerate() {
                assert!((p - q).abs() < 1e-5, "task {t} row {i}: {p} vs {q}");
            }
            assert_eq!(v(gates[t].clone()).len(), 13 * 6);
        }
        // the form ONNX export captures (batch first, the groups side by side): the same
        let (captured, _) = mtl_layers::with_experts_batch_first(|| model.forward_with_gates(&batch));
        for (a, b) in captured.iter().zip(&logits) {
            for (p, q) in v(a.clone()).iter().zip(&v(b.clone())) {
                assert!((p - q).abs() <= 1e-6, "batch first: {p} vs {q}");
            }
        }
        let named = model.gates(&batch);
        assert_eq!(named[0].experts.len(), 6);
        assert_eq!(named[0].experts[5], "expert5");
        // the trainer's forward (cut at the groups) predicts what predict does
        let forward = model.forward(&batch);
        assert_eq!(
            v(forward.predictions[0].clone()),
            v(model.predict(&batch)[0].clone())
        );
        assert!(model.branching().is_some(), "groups are branches");
    }
}

#[test]
fn expert_groups_must_divide_the_experts() {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    for groups in [0, 3, 5] {
        let mut config = MmoeConfig::new(4, MlpSpec::new([4]), MlpSpec::new([4]), tasks());
        config.expert_groups = groups;
        let err = config
            .init(&s, enc.layout(), &Device::flex())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.expert_groups") && err.contains(&format!("= {groups}")),
            "{err}"
        );
    }
    let one = MmoeConfig::new(4, MlpSpec::new([4]), MlpSpec::new([4]), tasks())
        .init(&s, enc.layout(), &Device::flex())
        .unwrap();
    assert!(one.expert_groups.is_empty() && one.branching().is_none());
    // a config without the key reads as one group
    let text = "n_experts = 4\nexpert = { dims = [4] }\ntower = { dims = [4] }\n\
                tasks = [{ label = \"click\" }]";
    let config: MmoeConfig = toml::from_str(text).unwrap();
    assert_eq!(config.expert_groups, 1);
}

/// The fused experts, each expert's MLP on its own, and the batch-first form ONNX export
/// captures all give the same outputs.
#[test]
fn fused_experts_equal_separate_expert_mlps_in_training_and_eval() {
    use burn::tensor::Distribution;
    use mtl_mmoe::Experts;
    let device = Device::flex().autodiff();
    let n = 3;
    let experts = Experts::new(n, &MlpSpec::new([5, 4, 2]), 6, &device);
    // each expert as its own MLP, copied out before any training step
    let separate: Vec<_> = (0..n).map(|k| experts.expert(k)).collect();
    let close = |a: Tensor<2>, b: Tensor<2>, what: &str| {
        let (a, b) = (v(a), v(b));
        assert_eq!(a.len(), b.len());
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!((p - q).abs() < 1e-5, "{what}[{i}]: {p} vs {q}");
        }
    };
    for step in 0..2 {
        let x = Tensor::<2>::random([7, 6], Distribution::Normal(step as f64, 1.0), &device);
        let fused = experts.forward(x.clone()); // [7, n, 2], batch statistics
        assert_eq!(fused.dims(), [7, n, 2]);
        for (k, mlp) in separate.iter().enumerate() {
            let one = fused.clone().slice([0..7, k..k + 1, 0..2]).reshape([7, 2]);
            close(
                one,
                mlp.forward(x.clone()),
                &format!("train step {step}, expert {k}"),
            );
        }
    }
    // eval mode uses the running statistics both sides updated twice
    let x = Tensor::<2>::random([4, 6], Distribution::Normal(0.0, 1.0), &device).inner();
    let (experts, separate): (Experts, Vec<_>) =
        (experts.valid(), separate.into_iter().map(|m| m.valid()).collect());
    let fused = experts.forward(x.clone());
    for (k, mlp) in separate.iter().enumerate() {
        let one = fused.clone().slice([0..4, k..k + 1, 0..2]).reshape([4, 2]);
        close(one, mlp.forward(x.clone()), &format!("eval, expert {k}"));
    }
    // experts first and flat (what a group hands the trainer's cut), viewed back: the same
    let flat = Experts::unflatten(experts.forward_flat(x.clone()), 4);
    assert_eq!(v(flat.reshape([4, n * 2])), v(fused.clone().reshape([4, n * 2])));
    // the form ONNX export captures (batch first, a product per expert): the same values
    let batch_first = mtl_layers::with_experts_batch_first(|| experts.forward(x.clone()));
    let (a, b) = (v(fused.reshape([4, n * 2])), v(batch_first.reshape([4, n * 2])));
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        assert!((p - q).abs() <= 1e-6, "batch first [{i}]: {p} vs {q}");
    }
}

/// Label priors: every task tower's output bias starts at logit(its label's rate) (a binary
/// task) or its label's mean (a regression task), its weights as they were; a mean that is
/// not a rate (or not a number) leaves the task's random start.
#[test]
fn label_priors_start_every_task_at_its_labels_base_rate() {
    use mtl_layers::Tower;
    use mtl_mmoe::{PleConfig, SharedBottomConfig};
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    // the trainer's device: the primed biases are parameters that learn
    let device = Device::flex().autodiff();
    device.seed(3);
    let biases = |towers: &[Tower]| -> Vec<f64> {
        let out = |t: &Tower| t.mlp.output.as_ref().unwrap().bias.as_ref().unwrap().val();
        towers.iter().map(|t| f64::from(v(out(t))[0])).collect()
    };
    let weights = |towers: &[Tower]| -> Vec<Vec<f32>> {
        let out = |t: &Tower| t.mlp.output.as_ref().unwrap().weight.val();
        towers.iter().map(|t| v(out(t))).collect()
    };
    // click rate 0.2: logit = ln(0.2 / 0.8); dwell mean 3.5
    let want = [(0.2f64 / 0.8).ln(), 3.5];
    let check = |name: &str, before: &[Tower], after: &[Tower], kept: &[Tower]| {
        for (k, (got, want)) in biases(after).iter().zip(want).enumerate() {
            assert!((got - want).abs() < 1e-6, "{name} task {k}: {got} vs {want}");
        }
        assert_eq!(weights(after), weights(before), "{name}: the weights stay");
        assert_eq!(biases(kept), biases(before), "{name}: no rate, no prior");
    };
    let task_table = "tasks = [{ label = \"click\" }, { label = \"dwell\" }]";
    let mmoe = || {
        MmoeConfig::new(3, MlpSpec::new([8]), MlpSpec::new([4]), tasks())
            .init(&s, enc.layout(), &device)
            .unwrap()
    };
    let m = mmoe();
    let (before, after) = (m.towers.clone(), m.clone().with_label_priors(&[0.2, 3.5]));
    let kept = m.with_label_priors(&[1.5, f64::NAN]);
    check("mmoe", &before, &after.towers, &kept.towers);
    let sb: SharedBottomConfig = toml::from_str(&format!(
        "bottom = {{ dims = [8] }}\ntower = {{ dims = [4] }}\n{task_table}"
    ))
    .unwrap();
    let m = sb.init(&s, enc.layout(), &device).unwrap();
    let (before, after) = (m.towers.clone(), m.clone().with_label_priors(&[0.2, 3.5]));
    let kept = m.with_label_priors(&[-0.1, f64::INFINITY]);
    check("shared_bottom", &before, &after.towers, &kept.towers);
    let ple: PleConfig = toml::from_str(&format!(
        "n_level = 2\nn_expert_specific = 1\nn_expert_shared = 1\nexpert = {{ dims = [8] }}\ntower = {{ dims = [4] }}\n{task_table}"
    ))
    .unwrap();
    let m = ple.init(&s, enc.layout(), &device).unwrap();
    let (before, after) = (m.towers.clone(), m.clone().with_label_priors(&[0.2, 3.5]));
    let kept = m.with_label_priors(&[]);
    check("ple", &before, &after.towers, &kept.towers);
    // a label that never fires starts at a finite logit: the rate clamped to 1e-4
    let never = mtl_layers::output_prior(mtl_features::LabelKind::Binary, 0.0).unwrap();
    assert!((never - (1e-4f64 / (1.0 - 1e-4)).ln()).abs() < 1e-12, "{never}");
}
