//! # mtl-serve
//!
//! Serves a trained model directory over HTTP (axum on tokio):
//!
//! - `POST /v1/predict` — JSON rows (or columns) of raw feature values, encoded with the
//!   model's saved feature state as `mtl predict` encodes a CSV row ([`request`]); answers the
//!   scores per output, in the model's output order, with the model's id (a hash of its files).
//!   Requests waiting together are scored as one batch by the model worker ([`worker`]).
//! - `GET /health`, `GET /v1/model` (outputs, features, config and schema), `GET /metrics`
//!   (Prometheus text).
//!
//! Limits on body size and rows per request answer 413, a full queue 429, each with a JSON
//! error naming the limit; malformed requests answer 400 naming the row and field. A failure
//! while scoring answers 500 and the server goes on. SIGTERM or Ctrl-C stop accepting
//! connections and let the requests in flight finish.

pub mod metrics;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod request;
pub mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use burn::tensor::Device;
use mtl_eval::{EvalError, ModelDir, backend_device, io_err, record_err};
use mtl_features::{Encoder, TableLayout};
use mtl_layers::{MultiTaskModel, OutputSpec};
use mtl_layers::{Registry, WithModel};
use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::request::{Features, Layout, RequestError};
pub use crate::worker::Batching;
use crate::worker::{Job, Scores};

/// Errors that keep the server from starting or end it.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The model directory cannot be read or its model built.
    #[error(transparent)]
    Model(#[from] EvalError),
    /// A serving option out of its range.
    #[error("--{option} = {value}: {message}")]
    Option {
        /// The option.
        option: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP server failed while running.
    #[error("the HTTP server failed: {0}")]
    Server(std::io::Error),
}

/// Limits on what one request may ask.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request body size, in bytes.
    pub max_body_bytes: usize,
    /// Rows in one request.
    pub max_rows: usize,
    /// Requests queued for the model at once; more are refused with 429.
    pub queue: usize,
    /// How long a request's body may take to arrive once its headers have; slower (a client
    /// that stops sending) is answered 408.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_rows: 10_000,
            queue: 1024,
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// What `mtl serve` is asked to do.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The trained model directory.
    pub model_dir: PathBuf,
    /// Address to listen on (`host:port`; port 0 picks a free one).
    pub addr: String,
    /// Backend the model runs on.
    pub backend: String,
    /// Per-request limits.
    pub limits: Limits,
    /// How requests are batched together.
    pub batching: Batching,
    /// Serve the model of a run that has not finished (refused otherwise).
    pub allow_unfinished: bool,
}

impl ServeOptions {
    /// Checks every option against its range.
    pub fn check(&self) -> Result<(), ServeError> {
        let range = |option: &'static str, value: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(ServeError::Option {
                    option,
                    value: value.to_string(),
                    message: format!("must be in {lo}..={hi}"),
                })
            }
        };
        range("max-body-bytes", self.limits.max_body_bytes, 1 << 10, 1 << 30)?;
        range("max-rows", self.limits.max_rows, 1, 1_000_000)?;
        range("queue", self.limits.queue, 1, 1_000_000)?;
        range(
            "body-timeout-ms",
            self.limits.body_timeout.as_millis().min(usize::MAX as u128) as usize,
            1,
            3_600_000,
        )?;
        range("max-batch-rows", self.batching.max_rows, 1, 1_000_000)?;
        range(
            "max-wait-ms",
            self.batching.max_wait.as_millis() as usize,
            0,
            1000,
        )
    }
}

/// A server that is listening.
#[derive(Debug, Clone)]
pub struct Started {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The model's id (a hash of its files).
    pub model_id: String,
    /// The model's outputs, in score order.
    pub outputs: Vec<String>,
}

/// Waiting this long for the model's answer means something is stuck: 503.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// A model directory's id: xxh3 of its config, schema, feature state and weights.
pub fn model_id(dir: &Path) -> Result<String, EvalError> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for name in [
        "config.toml",
        "schema.toml",
        "features.json",
        "model.bpk",
        "calibration.json",
    ] {
        let path = dir.join(name);
        // the calibration is part of what the model answers: another map, another id
        if name == "calibration.json" && !path.exists() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        hasher.update(name.as_bytes());
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(format!("{:016x}", hasher.digest()))
}

/// Loads the model's weights on the worker thread and scores until the queue closes.
struct Worker {
    dir: PathBuf,
    layout: TableLayout,
    device: Device,
    queue: std::sync::mpsc::Receiver<Job>,
    batching: Batching,
    parsing: Arc<AtomicUsize>,
    metrics: Metrics,
    ready: std::sync::mpsc::Sender<Result<(), EvalError>>,
}

impl WithModel for Worker {
    type Out = ();
    type Error = EvalError;

    fn run<M: MultiTaskModel + 'static>(self, model: M) -> Result<(), EvalError> {
        let path = self.dir.join("model.bpk");
        match model.try_load_file(&path) {
            Ok(model) => {
                let model = model.valid();
                let _ = self.ready.send(Ok(()));
                worker::run(
                    &model,
                    &self.layout,
                    &self.device,
                    &self.queue,
                    self.batching,
                    &self.parsing,
                    &self.metrics,
                );
            }
            Err(e) => {
                let _ = self.ready.send(Err(record_err(&path)(e)));
            }
        }
        Ok(())
    }
}

/// What every handler shares.
struct App {
    model_id: String,
    info: Value,
    outputs: Vec<String>,
    features: Features,
    encoder: Encoder,
    /// The model directory's post-hoc calibration, applied to every answer.
    calibration: Option<mtl_eval::Calibration>,
    limits: Limits,
    queue: SyncSender<Job>,
    parsing: Arc<AtomicUsize>,
    metrics: Metrics,
}

/// Serves the model directory until SIGTERM or Ctrl-C; `on_ready` is called once it listens.
pub fn serve<R: Registry>(options: ServeOptions, on_ready: impl FnOnce(&Started)) -> Result<(), ServeError> {
    options.check()?;
    let dir = ModelDir::<R>::open_allowing(&options.model_dir, options.allow_unfinished)?;
    let plan = R::plan(&dir.model, &dir.schema).map_err(EvalError::from)?;
    let model_id = model_id(&options.model_dir)?;
    let device = backend_device(&options.backend)?;
    let metrics = Metrics::new();
    let parsing = Arc::new(AtomicUsize::new(0));
    let (queue, jobs) = sync_channel::<Job>(options.limits.queue);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let worker = {
        let (config, schema) = (dir.model.clone(), dir.schema.clone());
        let job = Worker {
            dir: options.model_dir.clone(),
            layout: dir.encoder.layout().clone(),
            device: device.clone(),
            queue: jobs,
            batching: options.batching,
            parsing: parsing.clone(),
            metrics: metrics.clone(),
            ready: ready_tx.clone(),
        };
        std::thread::Builder::new()
            .name("mtl-model".into())
            .spawn(move || {
                let layout = job.layout.clone();
                if let Err(e) = R::with_model(&config, &schema, &layout, &device, job) {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(ServeError::Server)?
    };
    match ready.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(ServeError::Server(std::io::Error::other(
                "the model worker ended while loading",
            )));
        }
    }
    let app = Arc::new(App {
        info: model_info::<R>(&dir, &plan.outputs, &model_id, &options),
        model_id: model_id.clone(),
        outputs: plan.outputs.iter().map(|o| o.name.clone()).collect(),
        features: Features::new(&dir.schema),
        encoder: dir.encoder.clone(),
        calibration: dir.calibration.clone(),
        limits: options.limits,
        queue,
        parsing,
        metrics,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mtl-http")
        .build()
        .map_err(ServeError::Server)?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&options.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: options.addr.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(ServeError::Server)?;
        on_ready(&Started {
            addr,
            model_id,
            outputs: app.outputs.clone(),
        });
        axum::serve(listener, router(app))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(ServeError::Server)
    });
    // the router, and with it the queue's sender, is gone: the worker ends
    let _ = worker.join();
    result
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/predict", post(predict))
        .route(
            "/v1/model",
            get(|State(app): State<Arc<App>>| async move { axum::Json(app.info.clone()) }),
        )
        .route(
            "/health",
            get(|State(app): State<Arc<App>>| async move {
                axum::Json(json!({"status": "ok", "model_id": app.model_id}))
            }),
        )
        .route(
            "/metrics",
            get(|State(app): State<Arc<App>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    app.metrics.render(),
                )
            }),
        )
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: POST /v1/predict; GET /health, /v1/model, /metrics",
            )
        })
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: POST /v1/predict, GET /health, /v1/model, /metrics",
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error while answering this request",
            )
        }))
        .with_state(app)
}

/// Counts every request by route and status, and times it.
async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("other".to_string(), |m| m.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let m = &app.metrics;
    m.requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    m.latency
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    if !response.status().is_success() {
        let kind = match response.status() {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::TOO_MANY_REQUESTS => "queue_full",
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => "no_route",
            _ => "internal",
        };
        m.errors.with_label_values(&[kind]).inc();
    }
    response
}

/// A JSON error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({"error": message.into(), "status": status.as_u16()});
    (status, axum::Json(body)).into_response()
}

/// A body over the limit is still read (and dropped) up to this size, so that the client
/// gets its 413 rather than a connection reset while it sends.
const DRAIN_CAP: usize = 64 << 20;

/// The body, or `None` when it is over `limit` bytes (read on, and dropped, up to
/// [`DRAIN_CAP`]).
async fn read_body(mut body: Body, limit: usize) -> Result<Option<Vec<u8>>, axum::Error> {
    use http_body_util::BodyExt;
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > DRAIN_CAP {
            break;
        }
        if seen <= limit {
            bytes.extend_from_slice(&data);
        }
    }
    Ok((seen <= limit).then_some(bytes))
}

/// Counts a request in flight while it lives.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

async fn predict(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    app.metrics.in_flight.inc();
    let _in_flight = InFlight(&app.metrics);
    let limit = app.limits.max_body_bytes;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over the limit of {limit} bytes (--max-body-bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_CAP as u64) {
        // too large even to read past: answer now (the client may see the connection close)
        return too_large();
    }
    let wait = app.limits.body_timeout;
    let bytes = match tokio::time::timeout(wait, read_body(body, limit)).await {
        Ok(Ok(Some(b))) => b,
        Ok(Ok(None)) => return too_large(),
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms (--body-timeout-ms)",
                    wait.as_millis()
                ),
            );
        }
    };
    app.parsing.fetch_add(1, Ordering::AcqRel);
    let parsed = tokio::task::block_in_place(|| {
        request::parse(&bytes, &app.features, &app.encoder, app.limits.max_rows)
    });
    let (layout, data) = match parsed {
        Ok(p) => p,
        Err(e) => {
            app.parsing.fetch_sub(1, Ordering::AcqRel);
            return match e {
                RequestError::Bad(m) => error(StatusCode::BAD_REQUEST, m),
                RequestError::TooLarge(m) => error(StatusCode::PAYLOAD_TOO_LARGE, m),
            };
        }
    };
    let rows = data.rows;
    let (reply, answer) = oneshot::channel::<Scores>();
    let sent = app.queue.try_send(Job { data, reply });
    app.parsing.fetch_sub(1, Ordering::AcqRel);
    match sent {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the queue is full: {} requests wait for the model (--queue); retry later",
                    app.limits.queue
                ),
            );
        }
        Err(TrySendError::Disconnected(_)) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the model worker has stopped");
        }
    }
    let scores = match tokio::time::timeout(REPLY_TIMEOUT, answer).await {
        Ok(Ok(Ok(scores))) => scores,
        Ok(Ok(Err(message))) => return error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Ok(Err(_)) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the model worker stopped before answering",
            );
        }
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no answer from the model in time",
            );
        }
    };
    app.metrics.rows.inc_by(rows as u64);
    let mut scores = scores;
    if let Some(c) = &app.calibration {
        c.apply(&app.outputs, &mut scores);
    }
    let body = match layout {
        Layout::Rows => json!({
            "model_id": app.model_id,
            "outputs": app.outputs,
            "scores": (0..rows).map(|r| scores.iter().map(|c| c[r]).collect::<Vec<f32>>()).collect::<Vec<_>>(),
        }),
        Layout::Columns => json!({
            "model_id": app.model_id,
            "outputs": app.outputs,
            "columns": scores,
        }),
    };
    axum::Json(body).into_response()
}

/// `GET /v1/model`: what the model is and what it takes.
fn model_info<R: Registry>(
    dir: &ModelDir<R>,
    outputs: &[OutputSpec],
    model_id: &str,
    options: &ServeOptions,
) -> Value {
    let s = &dir.schema.schema;
    let mut features = Vec::new();
    for f in &s.sparse {
        features.push(json!({"name": f.name, "kind": "sparse"}));
    }
    for f in &s.sequence {
        features.push(
            json!({"name": f.name, "kind": "sequence", "delimiter": f.delimiter, "max_len": f.max_len}),
        );
    }
    for f in &s.dense {
        features.push(json!({"name": f.name, "kind": "dense", "default": f.default}));
    }
    let text = |name: &str| std::fs::read_to_string(dir.dir.join(name)).unwrap_or_default();
    json!({
        "model_id": model_id,
        "type": R::kind(&dir.model),
        "dir": dir.dir.display().to_string(),
        "backend": options.backend,
        "outputs": outputs.iter().map(|o| json!({"name": o.name, "kind": format!("{:?}", o.kind).to_lowercase()})).collect::<Vec<_>>(),
        "features": features,
        "labels": dir.schema.label_names(),
        "limits": {
            "max_body_bytes": options.limits.max_body_bytes,
            "max_rows": options.limits.max_rows,
            "queue": options.limits.queue,
            "max_batch_rows": options.batching.max_rows,
            "max_wait_ms": options.batching.max_wait.as_secs_f64() * 1e3,
        },
        "config": text("config.toml"),
        "schema": text("schema.toml"),
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: no new connections; requests in flight finish");
}
