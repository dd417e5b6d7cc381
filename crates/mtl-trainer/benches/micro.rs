//! Criterion micro-benchmarks, per compiled and usable backend: embedding lookup
//! forward+backward, MLP forward, MMOE forward, and one full training step (forward,
//! backward, Adam) on the torch-rechub example configuration (20 fields, embed 16, batch 1024):
//! through burn's dense embedding gradient for every model, and as `mtl train` runs it by
//! default (row-sparse: gather the batch's rows, row-wise Adam) for ESMM and MMOE.
//! Apart from the backends: catch-up's replay of the steps a row missed, exact and strided, on
//! a table small enough to stay in cache — the replay's arithmetic alone (`catch_up/…`;
//! `RAYON_NUM_THREADS=1` for one thread's cost).
//! `cargo xtask bench` runs them; `MTL_BENCH_VOCAB` sets the ids per field.

use std::hint::black_box;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use mtl_features::backend::usable_backends;
use mtl_features::{BatchTensors, EncodedData, Encoder, Schema, StateFitter, ValidSchema};
use mtl_layers::{MlpSpec, MultiTaskModel};
use mtl_models::{ModelConfig, Models};
use mtl_optim::{CatchUpReplay, RowAdamConfig, SparseAdam, SparseAdamConfig};
use mtl_trainer::fit::loader::Batch;
use mtl_trainer::fit::step::Stepper;
use mtl_trainer::{EmbeddingUpdate, Registry, TrainError, TrainSettings, WithModel};

const BATCH: usize = 1024;
const FIELDS: usize = 20;

fn vocab() -> usize {
    std::env::var("MTL_BENCH_VOCAB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn schema() -> ValidSchema {
    let mut text = String::from("embed_dim = 16\n");
    for k in 0..FIELDS {
        text += &format!(
            "[[sparse]]\nname = \"f{k}\"\nvocab_size = {}\ngroup = \"g{}\"\n",
            vocab(),
            k % 2
        );
    }
    text += "[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n";
    Schema::from_toml_str(&text, "bench").expect("valid schema")
}

fn data() -> EncodedData {
    let v = vocab() as u64;
    let mut s = 1u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    };
    EncodedData {
        rows: BATCH,
        n_sparse: FIELDS,
        n_labels: 2,
        sparse: (0..BATCH * FIELDS).map(|_| (next() % v) as u32).collect(),
        labels: (0..BATCH)
            .flat_map(|r| [f32::from(r % 25 == 0), f32::from(r % 500 == 0)])
            .collect(),
        ..Default::default()
    }
}

struct TrainStep<'a> {
    c: &'a mut Criterion,
    name: String,
    batch: BatchTensors,
}

/// One row-sparse step as the trainer takes it (its batch built ahead, as the trainer's
/// loader thread does): the trainer's [`Stepper`] gathers the distinct rows, runs forward and
/// backward, row-wise Adam on those rows and burn's Adam on the dense layers.
struct SparseStep<'a> {
    c: &'a mut Criterion,
    name: String,
    batch: BatchTensors,
    unique: Vec<i32>,
    layout: mtl_features::TableLayout,
    device: burn::tensor::Device,
}

impl WithModel for SparseStep<'_> {
    type Out = ();
    type Error = TrainError;
    fn run<M: MultiTaskModel + 'static>(self, model: M) -> Result<(), TrainError> {
        let settings = TrainSettings {
            embedding: EmbeddingUpdate::Sparse,
            ..TrainSettings::default()
        };
        let optim = mtl_trainer::fit::optimizer(&settings);
        let (model, mut stepper) = Stepper::new(
            model,
            optim,
            &settings,
            &self.layout,
            &self.device,
            None,
            None,
            None,
        )?;
        let mut model = Some(model);
        let (batch, unique) = (self.batch, self.unique);
        self.c.bench_function(&self.name, |b| {
            b.iter(|| {
                let m = model.take().expect("model");
                let batch = Batch {
                    tensors: batch.clone(),
                    table_rows: unique.clone(),
                    mass: batch.rows as f64,
                };
                let (m, losses) = stepper.step(m, batch, 1, None).expect("a finite step");
                black_box(losses.total);
                model = Some(m);
            })
        });
        Ok(())
    }
}

impl WithModel for TrainStep<'_> {
    type Out = ();
    type Error = TrainError;
    fn run<M: MultiTaskModel + 'static>(self, model: M) -> Result<(), TrainError> {
        let mut optim = mtl_trainer::fit::optimizer(&TrainSettings::default());
        let mut model = Some(model);
        let batch = self.batch;
        self.c.bench_function(&self.name, |b| {
            b.iter(|| {
                let m = model.take().expect("model");
                let f = m.forward(&batch);
                let loss = f.total_loss(&[]);
                let _ = loss.clone().into_scalar::<f32>();
                let grads = GradientsParams::from_grads(loss.backward(), &m);
                model = Some(optim.step(1e-3, m, grads));
            })
        });
        Ok(())
    }
}

fn benches(c: &mut Criterion) {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let d = data();
    let idx: Vec<usize> = (0..BATCH).collect();
    let models: Vec<ModelConfig> = [
        "type = \"esmm\"\nctr_tower = { dims = [16, 8] }\ncvr_tower = { dims = [16, 8] }",
        "type = \"mmoe\"\nn_experts = 8\nexpert = { dims = [16] }\ntower = { dims = [8] }\ntasks = [{ label = \"click\" }, { label = \"purchase\" }]",
        "type = \"omoe\"\nn_experts = 8\nexpert = { dims = [16] }\ntower = { dims = [8] }\ntasks = [{ label = \"click\" }, { label = \"purchase\" }]",
        "type = \"shared_bottom\"\nbottom = { dims = [16] }\ntower = { dims = [8] }\ntasks = [{ label = \"click\" }, { label = \"purchase\" }]",
    ]
    .iter()
    .map(|t| mtl_trainer::parse_model::<Models>(t).expect("model config"))
    .collect();
    for (kind, device) in usable_backends().expect("backends") {
        let v = vocab();
        let ad = device.clone().autodiff();
        ad.seed(1);
        // embedding lookup forward + backward (the dense gradient of burn's embedding)
        let esmm = Models::with_model(&models[0], &s, enc.layout(), &ad, Return).expect("esmm");
        let batch_ad = d.batch(&idx, enc.layout(), &ad);
        c.bench_function(&format!("{kind}/embedding_fwd_bwd/vocab{v}"), |b| {
            b.iter(|| {
                let x = esmm.input.forward(&batch_ad);
                let grads = x.sum().backward();
                black_box(esmm.input.embedding.weight.val().grad(&grads).map(|g| g.dims()));
            })
        });
        let mlp = MlpSpec::new([256, 128, 64]).init(320, true, &device);
        let x = Tensor::<2>::random([BATCH, 320], Distribution::Normal(0.0, 1.0), &device);
        let mlp = mlp.valid();
        c.bench_function(&format!("{kind}/mlp_fwd/320-256-128-64-1"), |b| {
            b.iter(|| black_box(mlp.forward(x.clone()).into_data()))
        });
        let mmoe = Models::with_model(&models[1], &s, enc.layout(), &device, Return).expect("mmoe");
        let batch = d.batch(&idx, enc.layout(), &device);
        c.bench_function(&format!("{kind}/mmoe_fwd/example"), |b| {
            b.iter(|| black_box(mmoe.forward_gates_len(&batch)))
        });
        for (name, config) in ["esmm", "mmoe", "omoe", "shared_bottom"].iter().zip(&models) {
            let step = TrainStep {
                c,
                name: format!("{kind}/{name}_train_step/example/vocab{v}"),
                batch: d.batch(&idx, enc.layout(), &ad),
            };
            Models::with_model(config, &s, enc.layout(), &ad, step).expect("train step");
        }
        for (name, config) in ["esmm", "mmoe"].iter().zip(&models) {
            let (batch, unique) = d.batch_unique(&idx, enc.layout(), &ad);
            let step = SparseStep {
                c,
                name: format!("{kind}/{name}_train_step_sparse/example/vocab{v}"),
                batch,
                unique,
                layout: enc.layout().clone(),
                device: ad.clone(),
            };
            Models::with_model(config, &s, enc.layout(), &ad, step).expect("sparse train step");
        }
    }
}

/// Rows of the catch-up benchmarks' table.
const CATCH_UP_ROWS: usize = 10_000;
/// Width of its rows (the examples' embedding width).
const CATCH_UP_DIM: usize = 16;

/// A host table of [`CATCH_UP_ROWS`] rows whose every row took one step (so it has moments)
/// and then missed `gap` steps (one other row took them), with the weight average; Adam with
/// L2 decay 1e-3, as the defaults train the table.
fn behind_table(replay: CatchUpReplay, gap: u64) -> SparseAdam {
    let (rows, dim) = (CATCH_UP_ROWS, CATCH_UP_DIM);
    let device = Device::flex();
    let tensor = |v: Vec<f32>, n: usize| Tensor::<2>::from_data(TensorData::new(v, [n, dim]), &device);
    let init = (0..rows * dim)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 2e-4)
        .collect();
    let config = SparseAdamConfig {
        adam: RowAdamConfig {
            weight_decay: 1e-3,
            ..RowAdamConfig::default()
        },
        catch_up: Some(replay),
        average_decay: Some(0.99),
    };
    let mut table = SparseAdam::new(tensor(init, rows), config, &device);
    let all: Vec<i32> = (0..rows as i32).collect();
    let grad = (0..rows * dim)
        .map(|i| ((i * 104729) % 2001) as f32 * 1e-6 - 1e-3)
        .collect();
    drop(table.gather(all.clone()));
    table.step(&all, tensor(grad, rows), 1e-3);
    // row `rows − 1` alone takes the next steps; the others fall behind
    for _ in 0..gap {
        drop(table.gather(vec![rows as i32 - 1]));
        table.step(&[rows as i32 - 1], tensor(vec![1e-3; dim], 1), 1e-3);
    }
    table
}

/// Catch-up's replay of [`CATCH_UP_ROWS`] rows that missed `gap` steps each, exactly and in
/// strides (`fast-catch-up`, the default): divide by the rows for one row's cost. The rows lie
/// side by side in a table that stays in cache; a training step's rows are scattered over a
/// larger one.
fn catch_up_benches(c: &mut Criterion) {
    for gap in [12, 50, 350] {
        for (name, replay) in [
            ("exact", CatchUpReplay::Exact),
            ("strided", CatchUpReplay::Strided),
        ] {
            c.bench_function(&format!("catch_up/{name}/gap{gap}/rows{CATCH_UP_ROWS}"), |b| {
                b.iter_batched(
                    || behind_table(replay, gap),
                    |mut table| {
                        table.catch_up();
                        table
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
}

/// Hands back the model built by the registry as a type-erased box of its forward.
struct Return;

/// A built model behind a small object-safe interface for the forward benchmarks.
trait Bench {
    fn forward_gates_len(&self, batch: &BatchTensors) -> usize;
}

struct Boxed<M: MultiTaskModel>(M);

impl<M: MultiTaskModel> Bench for Boxed<M> {
    fn forward_gates_len(&self, batch: &BatchTensors) -> usize {
        self.0
            .predict(batch)
            .into_iter()
            .map(|t| t.into_data().num_elements())
            .sum()
    }
}

/// The ESMM input layer is what the embedding benchmark needs; other models give theirs too.
struct Built {
    input: mtl_features::InputLayer,
    model: Box<dyn Bench>,
}

impl Built {
    fn forward_gates_len(&self, batch: &BatchTensors) -> usize {
        self.model.forward_gates_len(batch)
    }
}

impl WithModel for Return {
    type Out = Built;
    type Error = TrainError;
    fn run<M: MultiTaskModel + 'static>(self, model: M) -> Result<Built, TrainError> {
        Ok(Built {
            input: model.input_layer().clone(),
            model: Box::new(Boxed(model)),
        })
    }
}

criterion_group! {
    name = micro;
    config = Criterion::default().sample_size(10);
    targets = benches, catch_up_benches
}
criterion_main!(micro);
