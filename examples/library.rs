//! The mtl crates as a library, without the CLI: schema → data → model → train → metrics.
//!
//! `cargo run --release -p mtl-examples --example library`

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use mtl_data::{BadRowPolicy, fit_state, read_encoded};
use mtl_esmm::EsmmConfig;
use mtl_eval::metrics;
use mtl_eval::predict_all;
use mtl_features::{Encoder, Schema};
use mtl_layers::{MlpSpec, ModelBuilder, MultiTaskModel};
use mtl_synth::{CcpSpec, generate_ccp};
use mtl_trainer::TrainSettings;
use mtl_trainer::fit::loader::epoch_order;
use mtl_trainer::fit::optimizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. data and schema (any CSV with a schema TOML works the same way)
    let dir = tempfile::tempdir()?;
    let files = generate_ccp(&CcpSpec::small(50_000, 1), dir.path(), "ccp")?;
    let schema = Schema::from_file(&files.schema)?;

    // 2. fit the feature state on the training file, then encode train and test
    let state = fit_state(std::slice::from_ref(&files.train), &schema, BadRowPolicy::Fail)?;
    let encoder = Encoder::new(&schema, &state);
    let (train, _, _) = read_encoded(&files.train, &encoder, BadRowPolicy::Fail, true, None)?;
    let (test, _, _) = read_encoded(&files.test, &encoder, BadRowPolicy::Fail, true, None)?;

    // 3. the model, on an autodiff device
    let device = Device::flex().autodiff();
    device.seed(7);
    let mut model = EsmmConfig::new(MlpSpec::new([64, 32]), MlpSpec::new([64, 32])).init(
        &schema,
        encoder.layout(),
        &device,
    )?;

    // 4. one epoch of Adam
    let settings = TrainSettings {
        lr: 2e-3,
        batch_size: 512,
        ..TrainSettings::default()
    };
    let mut optim = optimizer(&settings);
    for chunk in epoch_order(train.rows, 7, 0).chunks(settings.batch_size) {
        let batch = train.batch(chunk, encoder.layout(), &device);
        let loss = model.forward(&batch).total_loss(&[]);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(settings.lr, model, grads);
    }

    // 5. per-task metrics on the test set (CVR on clicked rows)
    let eval = model.valid();
    let (predictions, _) = predict_all(&eval, &test, encoder.layout(), &Device::flex(), 4096, false)?;
    for m in metrics::evaluate(&eval.outputs(), &predictions, &test, &schema.label_names()) {
        println!("{}", m.summary());
    }
    Ok(())
}
