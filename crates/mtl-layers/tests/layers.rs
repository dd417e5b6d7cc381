//! MLP shapes, BatchNorm in train and eval mode, losses against formulas, and backend parity.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use mtl_features::backend::usable_backends;
use mtl_features::{
    BackendKind, EncodedData, Encoder, FieldPooling, InputLayer, InputSpec, Schema, StateFitter,
};
use mtl_layers::head::{bce_with_logits, log_add_exp, mse};
use mtl_layers::{Activation, MlpSpec, trainable_params};

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn mlp_output_shapes() {
    let device = Device::flex();
    let x = Tensor::<2>::random([5, 7], Distribution::Normal(0.0, 1.0), &device);
    let spec = MlpSpec::new([16, 8]);
    assert_eq!(spec.init(7, false, &device).forward(x.clone()).dims(), [5, 8]);
    assert_eq!(spec.init(7, true, &device).forward(x.clone()).dims(), [5, 1]);
    assert_eq!(spec.output_dim(7, false), 8);
    let softmax = MlpSpec::new([4])
        .with_activation(Activation::Softmax)
        .with_batch_norm(false);
    let rows = to_vec(softmax.init(7, false, &device).forward(x).sum_dim(1));
    assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-5), "{rows:?}");
}

#[test]
fn mlp_parameter_count_matches_torch_rechub() {
    // torch-rechub MLP(320, dims=[16, 8]) with output layer: Linear+BN per hidden, Linear(8, 1)
    let device = Device::flex();
    let mlp = MlpSpec::new([16, 8]).init(320, true, &device);
    assert_eq!(
        trainable_params(&mlp),
        320 * 16 + 16 + 32 + 16 * 8 + 8 + 16 + 8 + 1
    );
    let no_bn = MlpSpec::new([16])
        .with_batch_norm(false)
        .init(320, false, &device);
    assert_eq!(trainable_params(&no_bn), 320 * 16 + 16);
    // burn's own count adds BatchNorm's running mean and variance (buffers in PyTorch)
    assert_eq!(mlp.num_params(), trainable_params(&mlp) + 2 * (16 + 8));
}

#[test]
fn batch_norm_uses_batch_statistics_in_training_and_running_ones_in_eval() {
    let device = Device::flex().autodiff();
    // seeded: an unlucky random layer can give a column so little spread that BatchNorm's ε
    // pulls its variance below 1 − 1e-3 (seen once in CI-like runs: 0.9985)
    device.seed(7);
    let spec = MlpSpec::new([3]).with_activation(Activation::Identity);
    let mlp = spec.init(2, false, &device);
    let x = Tensor::<2>::from_data(
        TensorData::new(vec![1.0f32, 2.0, 3.0, -1.0, 0.5, 4.0, -2.0, 1.0], [4, 2]),
        &device,
    );
    // training: each output column is normalised over the batch → mean 0, (biased) variance ≈ 1
    let y = mlp.forward(x.clone());
    let mean = to_vec(y.clone().mean_dim(0));
    let var = to_vec(y.var_bias(0));
    assert!(mean.iter().all(|m| m.abs() < 1e-5), "{mean:?}");
    assert!(var.iter().all(|v| (v - 1.0).abs() < 1e-3), "{var:?}");
    // eval: running statistics after one update are 0.9·(0, 1) + 0.1·batch stats (burn keeps
    // the biased batch variance), so the output equals (z − rm)/sqrt(rv + eps) computed by hand
    let eval = mlp.valid();
    let x_plain = x.clone().inner();
    let y_eval = eval.forward(x_plain.clone());
    let z = eval.blocks[0].linear.forward(x_plain);
    let zv = to_vec(z.clone());
    let batch_mean = to_vec(z.clone().mean_dim(0));
    let batch_var = to_vec(z.var_bias(0));
    let ye = to_vec(y_eval);
    for r in 0..4 {
        for c in 0..3 {
            let rm = 0.1 * batch_mean[c];
            let rv = 0.9 + 0.1 * batch_var[c];
            let expected = (zv[r * 3 + c] - rm) / (rv + 1e-5).sqrt();
            assert!(
                (ye[r * 3 + c] - expected).abs() < 1e-4,
                "r{r} c{c}: {} vs {expected}",
                ye[r * 3 + c]
            );
        }
    }
}

/// Gives every BatchNorm of `norms` random running statistics, scale and shift, as a trained
/// model has them (a new one's are 0, 1, 1, 0, which would hide a term the folding drops).
fn trained_norms<'a>(norms: impl IntoIterator<Item = &'a mut burn::nn::BatchNorm>, device: &Device) {
    use burn::module::{Param, RunningState};
    for norm in norms {
        let n = norm.gamma.dims()[0];
        let random = |mean, sd| Tensor::<1>::random([n], Distribution::Normal(mean, sd), device);
        norm.gamma = Param::from_tensor(random(1.0, 0.5));
        norm.beta = Param::from_tensor(random(0.0, 0.5));
        norm.running_mean = RunningState::new(random(0.3, 1.0));
        norm.running_var = RunningState::new(random(0.0, 1.0).abs().add_scalar(0.2));
    }
}

#[test]
fn inference_folds_batch_norm_into_the_layers_weights() {
    use mtl_layers::experts::Experts;
    let device = Device::flex();
    device.seed(11);
    let x = Tensor::<2>::random([9, 5], Distribution::Normal(0.5, 2.0), &device);
    // an MLP: against BatchNorm by its running statistics written out by hand, in f64
    let mut mlp = MlpSpec::new([6, 4]).init(5, false, &device);
    trained_norms(mlp.blocks.iter_mut().filter_map(|b| b.norm.as_mut()), &device);
    let f64s = |t: Tensor<1>| to_vec(t).into_iter().map(f64::from).collect::<Vec<_>>();
    let mut h: Vec<f64> = to_vec(x.clone()).into_iter().map(f64::from).collect();
    let mut width = 5;
    for block in &mlp.blocks {
        let w = to_vec(block.linear.weight.val());
        let b = f64s(block.linear.bias.as_ref().unwrap().val());
        let norm = block.norm.as_ref().unwrap();
        let (g, beta) = (f64s(norm.gamma.val()), f64s(norm.beta.val()));
        let (rm, rv) = (f64s(norm.running_mean.value()), f64s(norm.running_var.value()));
        let out = b.len();
        h = (0..9 * out)
            .map(|i| {
                let (r, c) = (i / out, i % out);
                let z = b[c]
                    + (0..width)
                        .map(|k| h[r * width + k] * f64::from(w[k * out + c]))
                        .sum::<f64>();
                ((z - rm[c]) / (rv[c] + 1e-5).sqrt() * g[c] + beta[c]).max(0.0)
            })
            .collect();
        width = out;
    }
    let y = to_vec(mlp.forward(x.clone()));
    assert_eq!(y.len(), h.len());
    for (i, (a, b)) in y.iter().zip(&h).enumerate() {
        assert!(
            (f64::from(*a) - b).abs() < 1e-5 * (1.0 + b.abs()),
            "mlp [{i}]: {a} vs {b}"
        );
    }
    // experts (a batched later layer): against each layer's product, then its BatchNorm
    let mut experts = Experts::new(3, &MlpSpec::new([4, 2]), 5, &device);
    trained_norms(experts.first.norm.as_mut(), &device);
    trained_norms(experts.layers.iter_mut().filter_map(|l| l.norm.as_mut()), &device);
    let first = experts
        .first
        .after_linear(experts.first.linear.forward(x.clone())); // [9, 3 · 4]
    let h = first.reshape([9, 3, 4]).swap_dims(0, 1); // [3, 9, 4]
    let layer = &experts.layers[0];
    let expected = layer.after_product(h.matmul(layer.weight.val()) + layer.bias.val());
    let expected = to_vec(expected.swap_dims(0, 1));
    let got = to_vec(experts.forward(x));
    assert_eq!(got.len(), expected.len());
    for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
        assert!(
            (a - b).abs() < 1e-5 * (1.0 + b.abs()),
            "experts [{i}]: {a} vs {b}"
        );
    }
}

#[test]
fn row_batch_norm_matches_burns_batch_norm_with_gradients_and_running_stats() {
    use burn::nn::BatchNormConfig;
    use mtl_layers::mlp::batch_norm_rows;
    let device = Device::flex().autodiff();
    let x = Tensor::<2>::random([6, 4], Distribution::Normal(1.0, 2.0), &device);
    let weights = Tensor::<2>::random([6, 4], Distribution::Normal(0.0, 1.0), &device);
    let ours = BatchNormConfig::new(4).init(&device);
    let burns = BatchNormConfig::new(4).init(&device);
    let gamma = Tensor::<1>::from_floats([0.5, 1.5, -1.0, 2.0], &device);
    let beta = Tensor::<1>::from_floats([0.1, -0.2, 0.3, 0.0], &device);
    let set = |n: burn::nn::BatchNorm| {
        let mut n = n;
        n.gamma = burn::module::Param::from_tensor(gamma.clone());
        n.beta = burn::module::Param::from_tensor(beta.clone());
        n
    };
    let (ours, burns) = (set(ours), set(burns));
    let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
        assert_eq!(a.len(), b.len());
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            assert!((a - b).abs() < 1e-5, "{what}[{i}]: {a} vs {b}");
        }
    };
    // two training steps, so the running statistics are updated twice
    for step in 0..2 {
        let xa = x.clone().detach().mul_scalar(1.0 + step as f32).require_grad();
        let xb = x.clone().detach().mul_scalar(1.0 + step as f32).require_grad();
        let ya = batch_norm_rows(&ours, xa.clone());
        let yb = burns.forward(xb.clone());
        close(to_vec(ya.clone()), to_vec(yb.clone()), "train output");
        let ga = (ya * weights.clone()).sum().backward();
        let gb = (yb * weights.clone()).sum().backward();
        close(
            to_vec(xa.grad(&ga).unwrap()),
            to_vec(xb.grad(&gb).unwrap()),
            "d/dx",
        );
        let (pa, pb) = (ours.gamma.val(), burns.gamma.val());
        close(
            to_vec(pa.grad(&ga).unwrap()),
            to_vec(pb.grad(&gb).unwrap()),
            "d/dgamma",
        );
        let (pa, pb) = (ours.beta.val(), burns.beta.val());
        close(
            to_vec(pa.grad(&ga).unwrap()),
            to_vec(pb.grad(&gb).unwrap()),
            "d/dbeta",
        );
    }
    close(
        to_vec(ours.running_mean.value()),
        to_vec(burns.running_mean.value()),
        "running mean",
    );
    close(
        to_vec(ours.running_var.value()),
        to_vec(burns.running_var.value()),
        "running var",
    );
    // inference uses the running statistics
    let (ours, burns) = (ours.valid(), burns.valid());
    let x = x.inner();
    close(
        to_vec(batch_norm_rows(&ours, x.clone())),
        to_vec(burns.forward(x)),
        "eval output",
    );
}

#[test]
fn losses_match_formulas() {
    let device = Device::flex();
    let logits = [-30.0f32, -1.0, 0.0, 2.0, 40.0];
    let labels = [0.0f32, 1.0, 0.0, 1.0, 0.0];
    let bce = bce_with_logits(
        Tensor::from_floats(logits, &device),
        Tensor::from_floats(labels, &device),
    )
    .into_scalar::<f64>();
    let expected: f64 = logits
        .iter()
        .zip(labels)
        .map(|(&x, y)| {
            let x = f64::from(x);
            // log(1 + e^{-|x|}) + max(x, 0) − y·x: the textbook stable BCE-with-logits
            (1.0 + (-x.abs()).exp()).ln() + x.max(0.0) - f64::from(y) * x
        })
        .sum::<f64>()
        / 5.0;
    assert!((bce - expected).abs() < 1e-4, "{bce} vs {expected}");
    let m = mse(
        Tensor::from_floats([1.0, 2.0], &device),
        Tensor::from_floats([0.0, 4.0], &device),
    )
    .into_scalar::<f64>();
    assert!((m - 2.5).abs() < 1e-6);
    let lae = to_vec(log_add_exp(
        Tensor::from_floats([0.0, -100.0, 50.0], &device),
        Tensor::from_floats([0.0, -100.0, -50.0], &device),
    ));
    let expected = [2f32.ln(), -100.0 + 2f32.ln(), 50.0];
    for (a, b) in lae.iter().zip(expected) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn backend_parity_embedding_and_mlp() {
    let backends = usable_backends().expect("a required backend is unusable");
    assert!(backends.iter().any(|(k, _)| *k == BackendKind::Flex));
    let schema = Schema::from_toml_str(
        "embed_dim = 4\n[[sparse]]\nname = \"a\"\nvocab_size = 50\ngroup = \"g\"\n[[sparse]]\nname = \"b\"\nvocab_size = 30\ngroup = \"g\"\n[[dense]]\nname = \"x\"\n[[labels]]\nname = \"y\"\nkind = \"binary\"\n",
        "p.toml",
    )
    .unwrap();
    let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
    let rows = 64;
    let data = EncodedData {
        rows,
        n_sparse: 2,
        seq_max_len: vec![],
        n_dense: 1,
        n_labels: 1,
        sparse: (0..rows)
            .flat_map(|r| [(r * 7 % 50) as u32, (r * 3 % 30) as u32])
            .collect(),
        sequence: vec![],
        seq_len: vec![],
        dense: (0..rows).map(|r| r as f32 / 10.0 - 3.0).collect(),
        labels: vec![0.0; rows],
    };
    let idx: Vec<usize> = (0..rows).collect();
    let flex = Device::flex();
    flex.seed(7);
    for pooling in [FieldPooling::Concat, FieldPooling::SumByGroup(vec!["g".into()])] {
        let spec = InputSpec::new(&schema, &pooling).unwrap();
        let input = InputLayer::new(spec, enc.layout(), 0.5, &flex);
        let mlp = MlpSpec::new([16, 8]).init(input.output_dim(), true, &flex);
        let reference = to_vec(mlp.forward(input.forward(&data.batch(&idx, enc.layout(), &flex))));
        for (kind, device) in &backends {
            let input_b = input.clone().to_device(device);
            let mlp_b = mlp.clone().to_device(device);
            let out = mlp_b.forward(input_b.forward(&data.batch(&idx, enc.layout(), device)));
            assert_eq!(out.device(), *device);
            let got = to_vec(out);
            let max_diff = got
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            eprintln!("parity {kind} vs flex ({pooling:?}): max |diff| = {max_diff:e}");
            assert!(max_diff < 1e-4, "{kind}: max diff {max_diff}");
        }
    }
}
