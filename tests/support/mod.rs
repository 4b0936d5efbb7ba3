//! Shared test support: the three store backends and a fault-injecting object
//! store wrapper.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tempfile::TempDir;
use tidemark::store::{CheckpointStore, StoreLocation};

pub const S3_BUCKET: &str = "tidemark-test";

/// The longest a test waits for a subprocess it runs to completion (the
/// built `tidemark`, an independent reader, a pyiceberg or deltalake-py
/// script). Each takes seconds; one that is still running after this is
/// hung, and the test fails saying so instead of stalling CI.
pub const SUBPROCESS_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// `Command::output` with a time-out ([`SUBPROCESS_LIMIT`]).
pub trait BoundedOutput {
    /// Runs the command to completion, capturing stdout and stderr. A command
    /// still running after [`SUBPROCESS_LIMIT`] is killed, and the result is
    /// an error of kind `TimedOut` that names its program.
    fn bounded_output(&mut self) -> std::io::Result<std::process::Output>;
}

impl BoundedOutput for Command {
    fn bounded_output(&mut self) -> std::io::Result<std::process::Output> {
        use std::io::Read;
        let mut child = self.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = std::time::Instant::now() + SUBPROCESS_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "`{}` was still running after {} s and was killed",
                        self.get_program().to_string_lossy(),
                        SUBPROCESS_LIMIT.as_secs()
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        Ok(std::process::Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }
}

/// A place to open stores on, and the way to open it again "from another process".
pub struct Backend {
    pub name: &'static str,
    url: String,
    options: HashMap<String, String>,
    memory: Option<Arc<dyn ObjectStore>>,
    _dir: Option<TempDir>,
}

impl Backend {
    pub fn memory() -> Self {
        Backend {
            name: "memory",
            url: "memory://".into(),
            options: HashMap::new(),
            memory: Some(Arc::new(InMemory::new())),
            _dir: None,
        }
    }

    pub fn local() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Backend {
            name: "local",
            url: format!("file://{}/store", dir.path().display()),
            options: HashMap::new(),
            memory: None,
            _dir: Some(dir),
        }
    }

    pub fn s3() -> Self {
        let endpoint = s3_endpoint();
        let prefix = uuid::Uuid::new_v4();
        Backend {
            name: "s3",
            url: format!("s3://{S3_BUCKET}/{prefix}"),
            options: s3_options(&endpoint),
            memory: None,
            _dir: None,
        }
    }

    /// The S3 server seen through `proxy`, with `options` added (a client
    /// time-out, say). The bucket is the same; the prefix is new.
    pub fn s3_through(proxy: &FaultProxy, options: &[(&str, &str)]) -> Self {
        let prefix = uuid::Uuid::new_v4();
        let mut all = s3_options(&proxy.endpoint);
        all.extend(options.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Backend {
            name: "s3-faults",
            url: format!("s3://{S3_BUCKET}/{prefix}"),
            options: all,
            memory: None,
            _dir: None,
        }
    }

    /// The same backend reached straight, not through `proxy`.
    pub fn bypassing(&self, proxy: &FaultProxy) -> Backend {
        Backend {
            name: self.name,
            url: self.url.clone(),
            options: proxy.bypass(&self.options),
            memory: None,
            _dir: None,
        }
    }

    /// The store's URL and the options to open it with.
    pub fn url(&self) -> (&str, &HashMap<String, String>) {
        (&self.url, &self.options)
    }

    /// A fresh handle on the backend, as another process would open it.
    pub fn location(&self) -> StoreLocation {
        match &self.memory {
            Some(store) => StoreLocation::from_object_store(store.clone(), Path::from("store")),
            None => StoreLocation::from_url(&self.url, &self.options).expect("open location"),
        }
    }

    /// A URL beside the store's, for source or table data, and the options to
    /// open it with. Not for the memory backend.
    pub fn data_url(&self, name: &str) -> (String, HashMap<String, String>) {
        assert!(self.memory.is_none(), "the memory backend has no URLs");
        (format!("{}-{name}", self.url), self.options.clone())
    }

    /// The backend seen through a fault-injecting wrapper.
    pub fn faulty(&self) -> (StoreLocation, Arc<FaultyStore>) {
        let inner = self.location();
        let faulty = Arc::new(FaultyStore::new(inner.object_store.clone()));
        (
            StoreLocation::from_object_store(faulty.clone(), inner.prefix),
            faulty,
        )
    }
}

pub fn s3_options(endpoint: &str) -> HashMap<String, String> {
    HashMap::from([
        ("aws_endpoint".to_string(), endpoint.to_string()),
        ("aws_allow_http".to_string(), "true".to_string()),
        ("aws_region".to_string(), "us-east-1".to_string()),
        ("aws_access_key_id".to_string(), "tidemark".to_string()),
        // The server checks no signature. A value that appears nowhere else,
        // since the CLI masks every secret it was given in all it prints.
        (
            "aws_secret_access_key".to_string(),
            "test-secret-not-real".to_string(),
        ),
    ])
}

struct S3Server {
    endpoint: String,
    _child: Option<Child>,
    _stdin: Option<ChildStdin>,
}

/// The endpoint of the S3-compatible server: `TIDEMARK_TEST_S3_ENDPOINT` if set
/// (its bucket `tidemark-test` must exist), else a moto server started once per
/// test binary, which exits when this process does.
pub fn s3_endpoint() -> String {
    static SERVER: OnceLock<Mutex<S3Server>> = OnceLock::new();
    let server = SERVER.get_or_init(|| Mutex::new(start_s3_server()));
    server.lock().expect("s3 server lock").endpoint.clone()
}

fn start_s3_server() -> S3Server {
    if let Ok(endpoint) = std::env::var("TIDEMARK_TEST_S3_ENDPOINT") {
        return S3Server {
            endpoint,
            _child: None,
            _stdin: None,
        };
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // The support module is shared by the workspace's crates; find the script
    // from the crate being tested.
    let script = support_script("s3_server.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args([&port.to_string(), S3_BUCKET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the S3 test server: python3 with moto[server] must be installed (bash .ci/run installs it)");
    await_ready(
        &mut child,
        "S3 test server (moto; scripts/test-setup.sh installs moto[server])",
    );
    S3Server {
        endpoint: format!("http://127.0.0.1:{port}"),
        _stdin: child.stdin.take(),
        _child: Some(child),
    }
}

/// How long a test server may take to print `READY`.
const SERVER_START_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits at most [`SERVER_START_LIMIT`] for `child` to print `READY` on its
/// first line; otherwise kills it and fails, naming `what`. A server that
/// never starts fails the test in a minute instead of hanging CI.
fn await_ready(child: &mut Child, what: &str) {
    let stdout = child.stdout.take().expect("the server's stdout is piped");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = sender.send(read);
    });
    let outcome = receiver.recv_timeout(SERVER_START_LIMIT);
    let failure = match outcome {
        Ok(Ok(line)) if line.trim() == "READY" => return,
        Ok(Ok(line)) => format!("printed {:?} instead of READY", line.trim()),
        Ok(Err(e)) => format!("could not be read from: {e}"),
        Err(_) => format!(
            "did not print READY within {} s",
            SERVER_START_LIMIT.as_secs()
        ),
    };
    let _ = child.kill();
    panic!("the {what} {failure}");
}

/// `tests/support/{name}`, found from whichever crate's tests run.
fn support_script(name: &str) -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        manifest.to_path_buf(),
        manifest.join(".."),
        manifest.join("../.."),
    ]
    .iter()
    .map(|root| root.join("tests/support").join(name))
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("tests/support/{name}"))
}

/// An HTTP proxy in front of the S3 test server that answers some requests
/// with 503s, stalls some reads past the client's time-out and withholds the
/// answers of some applied writes (`s3_fault_proxy.py`). Stops when dropped.
pub struct FaultProxy {
    endpoint: String,
    log: std::path::PathBuf,
    _dir: TempDir,
    _child: Child,
    _stdin: ChildStdin,
}

impl FaultProxy {
    /// Starts a proxy with the schedule given as the script's flags, for
    /// example `["--unavailable-every", "5"]`.
    pub fn start(schedule: &[&str]) -> Self {
        let upstream = s3_endpoint();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("faults.log");
        let mut child = Command::new("python3")
            .arg(support_script("s3_fault_proxy.py"))
            .arg(port.to_string())
            .arg(&upstream)
            .arg(&log)
            .args(schedule)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the S3 fault proxy (python3)");
        await_ready(&mut child, "S3 fault proxy");
        FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
            _stdin: child.stdin.take().expect("proxy stdin"),
            _child: child,
        }
    }

    /// `options` with the proxy's endpoint replaced by the server's.
    pub fn bypass(&self, options: &HashMap<String, String>) -> HashMap<String, String> {
        let mut options = options.clone();
        if options.get("aws_endpoint") == Some(&self.endpoint) {
            options.insert("aws_endpoint".into(), s3_endpoint());
        }
        options
    }

    /// `options` with the server's endpoint replaced by the proxy's: a
    /// process given them reaches the server through the proxy.
    pub fn through(&self, options: &HashMap<String, String>) -> HashMap<String, String> {
        let mut options = options.clone();
        if options.get("aws_endpoint") == Some(&s3_endpoint()) {
            options.insert("aws_endpoint".into(), self.endpoint.clone());
        }
        options
    }

    /// Waits until the proxy holds the request its `--hold` chose, and
    /// returns it (`held DELETE /bucket/key`). Fails, with the child's
    /// standard error, if `child` exits first or 120 s pass.
    pub fn await_held(&self, child: &mut Child, what: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Some(held) = self.faults().into_iter().find(|f| f.starts_with("held ")) {
                return held;
            }
            if let Some(status) = child.try_wait().expect("poll the child") {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                panic!(
                    "{what}: the command exited ({status}) before its request was held: \
                     {stderr}; the proxy's log: {:?}",
                    self.faults()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: no request was held within 120 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The faults injected so far, one line each: `503 PUT /bucket/key`,
    /// `stall GET ...`, `lost PUT ...`, `held DELETE ...`.
    pub fn faults(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A fault to inject into one matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail before the request reaches the store.
    FailBefore,
    /// Apply the request, then report failure (a lost response).
    LoseResponse,
    /// The process dies just before the request: it fails, and so does every
    /// later request through this wrapper.
    CrashBefore,
    /// The process dies right after the request reached the store: it is
    /// applied, it fails, and so does every later request through this wrapper.
    CrashAfter,
    /// The request is applied, its response is lost, and the client's retry
    /// finds the object it wrote: a conditional put reports `AlreadyExists`
    /// (as S3 answers a retried `If-None-Match` put that landed the first time).
    LandedBeforeRetry,
}

/// The kind of object store call a fault rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Puts (plain and conditional) and multipart uploads.
    Put,
    /// Whole-object reads.
    Get,
    /// Existence checks (HEAD).
    Head,
    /// Listings (flat and by directory).
    List,
    /// Deletes, one call per object.
    Delete,
    /// Copies.
    Copy,
}

struct Rule {
    op: Op,
    path_contains: String,
    fault: Fault,
    /// Matching calls let through before the fault fires.
    skip: usize,
    remaining: usize,
}

/// Wraps an object store, counts requests, and injects faults into the calls
/// a rule selects: by kind, by a text in the path, and by position (the Nth
/// matching call). Once a crash fault fired, every later call of any kind
/// fails, as calls of a dead process would.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    rules: Arc<Mutex<Vec<Rule>>>,
    pub gets: AtomicUsize,
    pub puts: AtomicUsize,
    pub lists: AtomicUsize,
    pub heads: AtomicUsize,
    pub deletes: Arc<AtomicUsize>,
    dead: Arc<std::sync::atomic::AtomicBool>,
    fired: Arc<AtomicUsize>,
    /// Futures to run once before the first LIST whose prefix contains the text.
    list_hooks: Mutex<Vec<(String, futures::future::BoxFuture<'static, ()>)>>,
    /// Futures to run once before the first PUT whose path contains the text.
    put_hooks: Mutex<Vec<(String, futures::future::BoxFuture<'static, ()>)>>,
    /// The prefix of every LIST so far, in order (`""` for the whole store).
    listed: Mutex<Vec<String>>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultyStore {
            inner,
            rules: Arc::new(Mutex::new(Vec::new())),
            gets: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
            heads: AtomicUsize::new(0),
            deletes: Arc::new(AtomicUsize::new(0)),
            dead: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            fired: Arc::new(AtomicUsize::new(0)),
            list_hooks: Mutex::new(Vec::new()),
            put_hooks: Mutex::new(Vec::new()),
            listed: Mutex::new(Vec::new()),
        }
    }

    /// The prefix of every LIST so far, in order (`""` for the whole store).
    pub fn listed_prefixes(&self) -> Vec<String> {
        self.listed.lock().expect("listed").clone()
    }

    fn record_list(&self, prefix: Option<&Path>) {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.listed
            .lock()
            .expect("listed")
            .push(prefix.map(|p| p.to_string()).unwrap_or_default());
    }

    /// Runs `hook` once, before the first PUT whose path contains
    /// `path_contains` is forwarded.
    pub fn before_put(&self, path_contains: &str, hook: futures::future::BoxFuture<'static, ()>) {
        self.put_hooks
            .lock()
            .expect("hooks")
            .push((path_contains.to_string(), hook));
    }

    /// The hook waiting for a PUT of `location`, if any (taken: it runs once).
    fn put_hook(&self, location: &Path) -> Option<futures::future::BoxFuture<'static, ()>> {
        let mut hooks = self.put_hooks.lock().expect("hooks");
        let at = hooks
            .iter()
            .position(|(text, _)| location.as_ref().contains(text.as_str()))?;
        Some(hooks.remove(at).1)
    }

    /// Runs `hook` once, before the first LIST whose prefix contains
    /// `prefix_contains` is forwarded: another actor's steps, forced in
    /// between two of this store's calls.
    pub fn before_list(
        &self,
        prefix_contains: &str,
        hook: futures::future::BoxFuture<'static, ()>,
    ) {
        self.list_hooks
            .lock()
            .expect("hooks")
            .push((prefix_contains.to_string(), hook));
    }

    /// Injects `fault` into the next `times` puts whose path contains `path_contains`.
    pub fn inject(&self, path_contains: &str, fault: Fault, times: usize) {
        self.inject_after(path_contains, fault, 0, times);
    }

    /// Like [`inject`](Self::inject), after letting `skip` matching puts through.
    pub fn inject_after(&self, path_contains: &str, fault: Fault, skip: usize, times: usize) {
        self.inject_on(Op::Put, path_contains, fault, skip, times);
    }

    /// Injects `fault` into `times` calls of kind `op` whose path contains
    /// `path_contains`, from the `skip + 1`-th such call on.
    pub fn inject_on(&self, op: Op, path_contains: &str, fault: Fault, skip: usize, times: usize) {
        self.rules.lock().expect("rules").push(Rule {
            op,
            path_contains: path_contains.to_string(),
            fault,
            skip,
            remaining: times,
        });
    }

    /// Faults injected so far.
    pub fn faults_fired(&self) -> usize {
        self.fired.load(Ordering::SeqCst)
    }

    /// Whether a crash fault fired.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Requests made so far (get + head + put + list + delete).
    pub fn requests(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
            + self.puts.load(Ordering::SeqCst)
            + self.lists.load(Ordering::SeqCst)
            + self.heads.load(Ordering::SeqCst)
            + self.deletes.load(Ordering::SeqCst)
    }

    pub fn reset_counts(&self) {
        for c in [&self.gets, &self.puts, &self.lists, &self.heads] {
            c.store(0, Ordering::SeqCst);
        }
        self.deletes.store(0, Ordering::SeqCst);
    }

    fn gate(&self) -> Gate {
        Gate {
            rules: self.rules.clone(),
            dead: self.dead.clone(),
            fired: self.fired.clone(),
        }
    }
}

/// What decides the fate of one call: the rules, the dead flag, the count of
/// faults fired. Shared with the streams that deletes return.
#[derive(Clone)]
struct Gate {
    rules: Arc<Mutex<Vec<Rule>>>,
    dead: Arc<std::sync::atomic::AtomicBool>,
    fired: Arc<AtomicUsize>,
}

impl Gate {
    /// Runs `call` under the rules: it may fail before, be applied and then
    /// fail, or kill the process before or after it.
    async fn run<T>(
        &self,
        op: Op,
        path: &Path,
        call: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(injected(path));
        }
        match self.take_fault(op, path) {
            None => call.await,
            Some(Fault::FailBefore) => Err(injected(path)),
            Some(Fault::LoseResponse) => {
                call.await?;
                Err(injected(path))
            }
            Some(Fault::CrashBefore) => {
                self.dead.store(true, Ordering::SeqCst);
                Err(injected(path))
            }
            Some(Fault::CrashAfter) => {
                let result = call.await;
                self.dead.store(true, Ordering::SeqCst);
                result?;
                Err(injected(path))
            }
            Some(Fault::LandedBeforeRetry) => {
                call.await?;
                Err(object_store::Error::AlreadyExists {
                    path: path.to_string(),
                    source: "injected: the retry of a request that landed".into(),
                })
            }
        }
    }

    fn take_fault(&self, op: Op, path: &Path) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("rules");
        let rule = rules
            .iter_mut()
            .find(|r| r.op == op && r.remaining > 0 && path.as_ref().contains(&r.path_contains))?;
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        rule.remaining -= 1;
        self.fired.fetch_add(1, Ordering::SeqCst);
        Some(rule.fault)
    }
}

fn injected(path: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("injected fault on {path}").into(),
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        if let Some(hook) = self.put_hook(location) {
            hook.await;
        }
        self.gate()
            .run(
                Op::Put,
                location,
                self.inner.put_opts(location, payload, opts),
            )
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.gate()
            .run(
                Op::Put,
                location,
                self.inner.put_multipart_opts(location, opts),
            )
            .await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head {
            self.heads.fetch_add(1, Ordering::SeqCst);
            Op::Head
        } else {
            self.gets.fetch_add(1, Ordering::SeqCst);
            Op::Get
        };
        self.gate()
            .run(op, location, self.inner.get_opts(location, options))
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        use futures::StreamExt as _;
        let inner = self.inner.clone();
        let gate = self.gate();
        let deletes = self.deletes.clone();
        locations
            .then(move |location| {
                let inner = inner.clone();
                let gate = gate.clone();
                let deletes = deletes.clone();
                async move {
                    let location = location?;
                    deletes.fetch_add(1, Ordering::SeqCst);
                    let one = location.clone();
                    let shown = location.clone();
                    gate.run(Op::Delete, &location, async move {
                        inner
                            .delete_stream(futures::stream::once(async move { Ok(one) }).boxed())
                            .next()
                            .await
                            .unwrap_or_else(|| Err(injected(&shown)))
                    })
                    .await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        use futures::StreamExt as _;
        self.record_list(prefix);
        let hook = prefix.and_then(|prefix| {
            let mut hooks = self.list_hooks.lock().expect("hooks");
            let at = hooks
                .iter()
                .position(|(text, _)| prefix.as_ref().contains(text.as_str()))?;
            Some(hooks.remove(at).1)
        });
        let inner = self.inner.clone();
        let gate = self.gate();
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            if let Some(hook) = hook {
                hook.await;
            }
            let at = prefix.clone().unwrap_or_default();
            gate.run(Op::List, &at, async {
                let listed: Vec<object_store::Result<ObjectMeta>> =
                    inner.list(prefix.as_ref()).collect().await;
                listed.into_iter().collect::<object_store::Result<Vec<_>>>()
            })
            .await
        })
        .flat_map(|listed| match listed {
            Ok(items) => futures::stream::iter(items.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.record_list(prefix);
        let at = prefix.cloned().unwrap_or_default();
        self.gate()
            .run(Op::List, &at, self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.gate()
            .run(Op::Copy, from, self.inner.copy_opts(from, to, options))
            .await
    }
}

/// A table in memory for protocol tests: the pipeline's marker and the paths
/// of the files appended, changed atomically by one commit. With `fail`,
/// every commit fails (a committer that dies there). Its data files, for gc,
/// live in `files`.
#[derive(Clone)]
pub struct MemoryTable {
    pub state: Arc<Mutex<(Option<u64>, Vec<String>)>>,
    pub fail: bool,
    pub files: Arc<dyn ObjectStore>,
    /// The table's name, recorded in commit intents.
    pub name: String,
    /// Set by [`MemoryTable::roll_back_to`]: the latest commit the current
    /// state carries, below the marker (the marker stays, as a rollback
    /// leaves a table property or a Delta `txn` in place).
    pub rolled_back_to: Arc<Mutex<Option<u64>>>,
    /// Set by [`MemoryTable::lose_history`]: the history no longer tells
    /// which commits the current state carries.
    pub history_lost: Arc<Mutex<bool>>,
    /// What [`tidemark::commit::CommitSink::marker_risk`] answers: a setting
    /// of the table that can drop the marker.
    pub marker_risk: Option<String>,
}

impl Default for MemoryTable {
    fn default() -> Self {
        MemoryTable {
            state: Arc::default(),
            fail: false,
            files: Arc::new(InMemory::new()),
            name: "memory-table".into(),
            rolled_back_to: Arc::default(),
            history_lost: Arc::default(),
            marker_risk: None,
        }
    }
}

impl MemoryTable {
    /// A table whose data files live in `files`.
    pub fn with_files(files: Arc<dyn ObjectStore>) -> Self {
        MemoryTable {
            files,
            ..Self::default()
        }
    }

    /// The same table, seen by a committer whose every commit fails.
    pub fn failing(&self) -> Self {
        MemoryTable {
            fail: true,
            ..self.clone()
        }
    }

    /// Rolls the table back behind the pipeline: its current state carries
    /// commits up to `carried` only (0: none), its marker stays. The next
    /// commit lands on top of that state.
    pub fn roll_back_to(&self, carried: u64) {
        *self.rolled_back_to.lock().unwrap() = Some(carried);
    }

    /// Undoes [`MemoryTable::roll_back_to`]: the table carries its marker's
    /// commit again.
    pub fn restore(&self) {
        *self.rolled_back_to.lock().unwrap() = None;
    }

    /// The history no longer tells which commits the current state carries
    /// (as an expiry that cut the chain of snapshots does).
    pub fn lose_history(&self) {
        *self.history_lost.lock().unwrap() = true;
    }

    /// The marker.
    pub fn marker(&self) -> Option<u64> {
        self.state.lock().unwrap().0
    }

    /// The files appended, in order.
    pub fn appended(&self) -> Vec<String> {
        self.state.lock().unwrap().1.clone()
    }
}

impl tidemark::commit::CommitSink for MemoryTable {
    fn table(&self) -> String {
        self.name.clone()
    }

    /// The table carries its marker's commit, unless rolled back.
    fn lineage<'a>(
        &'a self,
        _pipeline_id: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<tidemark::commit::Lineage, tidemark::error::BoxError>>
    {
        Box::pin(async move {
            if *self.history_lost.lock().unwrap() {
                return Ok(tidemark::commit::Lineage::Unknown);
            }
            let rolled_back_to = *self.rolled_back_to.lock().unwrap();
            Ok(match (rolled_back_to, self.marker()) {
                (Some(carried), _) => tidemark::commit::Lineage::RolledBack {
                    carried: (carried > 0).then_some(carried),
                    why: format!("rolled back to commit {carried}"),
                },
                (None, Some(marker)) => tidemark::commit::Lineage::Carries(marker),
                (None, None) => tidemark::commit::Lineage::Unknown,
            })
        })
    }

    /// The risk the test set, if any.
    fn marker_risk(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Option<String>, tidemark::error::BoxError>> {
        Box::pin(async { Ok(self.marker_risk.clone()) })
    }

    fn committed_sequence<'a>(
        &'a self,
        _pipeline_id: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<u64>, tidemark::error::BoxError>> {
        Box::pin(async move { Ok(self.marker()) })
    }

    fn commit<'a>(
        &'a self,
        request: &'a tidemark::commit::CommitRequest,
    ) -> futures::future::BoxFuture<
        'a,
        Result<tidemark::commit::CommitOutcome, tidemark::error::BoxError>,
    > {
        Box::pin(async move {
            if self.fail {
                return Err("the committer died before its table commit".into());
            }
            let mut state = self.state.lock().unwrap();
            let applied = state.0.is_none_or(|m| m < request.sequence);
            if applied {
                state.0 = Some(request.sequence);
                state.1.extend(request.files.iter().map(|f| f.path.clone()));
                *self.rolled_back_to.lock().unwrap() = None;
            }
            Ok(tidemark::commit::CommitOutcome {
                applied,
                table_version: serde_json::Value::Null,
            })
        })
    }
}

impl tidemark::gc::TableFiles for MemoryTable {
    fn delete_file<'a>(
        &'a self,
        path: &'a str,
    ) -> futures::future::BoxFuture<'a, tidemark::Result<()>> {
        Box::pin(async move {
            use object_store::ObjectStoreExt as _;
            match self.files.delete(&Path::from(path)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(tidemark::Error::Sink {
                    table: "memory-table".into(),
                    source: Box::new(e),
                }),
            }
        })
    }

    fn delete_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> futures::future::BoxFuture<'a, tidemark::Result<()>> {
        Box::pin(async move {
            use futures::TryStreamExt as _;
            let listed: Vec<ObjectMeta> = self
                .files
                .list(Some(&Path::from(prefix)))
                .try_collect()
                .await
                .map_err(|e| tidemark::Error::Sink {
                    table: "memory-table".into(),
                    source: Box::new(e),
                })?;
            for meta in listed {
                self.delete_file(meta.location.as_ref()).await?;
            }
            Ok(())
        })
    }
}

struct Postgres {
    url: String,
    _dir: Option<TempDir>,
    _child: Option<Child>,
    _stdin: Option<ChildStdin>,
}

/// A PostgreSQL server for catalog tests: `postgres://user@host:port` without a
/// database. `TIDEMARK_TEST_POSTGRES_URL` if set; else a server from the
/// machine's PostgreSQL binaries (`initdb`, `postgres` on `PATH` or under
/// `/usr/lib/postgresql/*/bin`), started once per test binary in a temporary
/// directory, run as the `postgres` user when the tests run as root, and
/// stopped when this process exits.
pub fn postgres_server() -> String {
    static SERVER: OnceLock<Mutex<Postgres>> = OnceLock::new();
    let server = SERVER.get_or_init(|| Mutex::new(start_postgres()));
    server.lock().expect("postgres lock").url.clone()
}

/// A new, empty database on the test server; returns its URL.
pub fn postgres_database() -> String {
    let server = postgres_server();
    let name = format!("t{}", uuid::Uuid::new_v4().simple());
    let status = Command::new("psql")
        .arg(format!("{server}/postgres"))
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("run psql (Debian's postgresql-client)");
    assert!(status.success(), "creating database {name} failed");
    format!("{server}/{name}")
}

fn postgres_binary(name: &str) -> String {
    let on_path = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    on_path
        .or_else(|| {
            let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.exists())
                .collect();
            found.sort();
            found.pop().map(|p| p.display().to_string())
        })
        .unwrap_or_else(|| panic!("PostgreSQL's `{name}` is not installed"))
}

fn start_postgres() -> Postgres {
    if let Ok(url) = std::env::var("TIDEMARK_TEST_POSTGRES_URL") {
        return Postgres {
            url,
            _dir: None,
            _child: None,
            _stdin: None,
        };
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    // PostgreSQL refuses to run as root.
    let as_user = |program: &str| -> Command {
        if root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", program]);
            command
        } else {
            Command::new(program)
        }
    };
    if root {
        let status = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown of the postgres directory failed");
    }
    let status = as_user(&postgres_binary("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres"])
        .stdout(Stdio::null())
        .status()
        .expect("run initdb");
    assert!(status.success(), "initdb failed");
    // The server lives as long as this process holds the shell's stdin open;
    // then the shell stops it and removes its files.
    let script = format!(
        "{} -D '{}' -p {port} -k '{dir}' -c listen_addresses=127.0.0.1 & pid=$!; \
         read _; kill $pid; wait $pid; rm -rf '{dir}'",
        postgres_binary("postgres"),
        data.display(),
        dir = dir.path().display()
    );
    let mut child = as_user("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres");
    let url = format!("postgres://postgres@127.0.0.1:{port}");
    let ready = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        Command::new("psql")
            .arg(format!("{url}/postgres"))
            .args(["-q", "-c", "SELECT 1"])
            .env("PGCONNECT_TIMEOUT", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(
        ready,
        "the PostgreSQL test server did not answer within 10 s"
    );
    Postgres {
        url,
        _dir: Some(dir),
        _stdin: child.stdin.take(),
        _child: Some(child),
    }
}

/// A REST catalog server (rustberg, an independent implementation) for this
/// test binary: `TIDEMARK_TEST_REST_CATALOG` if set; else the `rustberg`
/// binary that `scripts/test` installs under `$HOME/.cache/tidemark/rustberg`
/// (or one on `PATH`), started without authentication on a free port with a
/// local warehouse, and stopped when this process exits.
pub fn rest_catalog_server() -> String {
    /// The URL, and the shell that runs the server for as long as its stdin
    /// stays open (until this process exits).
    struct Server {
        url: String,
        _stdin: Option<std::process::ChildStdin>,
        _shell: Option<std::process::Child>,
    }
    static SERVER: std::sync::OnceLock<Server> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("TIDEMARK_TEST_REST_CATALOG") {
                return Server {
                    url,
                    _stdin: None,
                    _shell: None,
                };
            }
            let home = std::env::var("HOME").unwrap_or_default();
            let installed = format!("{home}/.cache/tidemark/rustberg/bin/rustberg");
            let binary = if std::path::Path::new(&installed).exists() {
                installed
            } else {
                "rustberg".to_string()
            };
            let dir = tempfile::tempdir().unwrap().keep();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let script = format!(
                "'{binary}' --no-auth --dev --insecure-http --host 127.0.0.1 --port {port} \
                 --warehouse 'file://{dir}/warehouse' --catalog-url 'file://{dir}/catalog' \
                 --log-level warn & pid=$!; read _; kill $pid; wait $pid; rm -rf '{dir}'",
                dir = dir.display()
            );
            // The server writes an audit record per request; keep it out of
            // the test output.
            let mut child = Command::new("sh")
                .args(["-c", &script])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start rustberg (scripts/test installs it)");
            let url = format!("http://127.0.0.1:{port}");
            let ready = (0..300).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            assert!(
                ready,
                "the REST catalog server (`{binary}`) did not listen on port {port} within 30 s"
            );
            Server {
                url,
                _stdin: child.stdin.take(),
                _shell: Some(child),
            }
        })
        .url
        .clone()
}

/// Every file below `dir`, at any depth (none if `dir` does not exist).
pub fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if path.is_file() {
            found.push(path);
        }
    }
    found
}

/// Writes each batch into a [`MemoryTable`]'s storage as one data file (the
/// batch's row count as its content), recorded in flight before it is written
/// and staged once it is.
pub struct MemoryWriter {
    pub table: MemoryTable,
}

impl tidemark::pipeline::DataWriter for MemoryWriter {
    fn write<'a>(
        &'a mut self,
        batch: &'a arrow_array::RecordBatch,
        checkpoint: &'a mut tidemark::store::CheckpointWriter,
    ) -> futures::future::BoxFuture<'a, tidemark::Result<()>> {
        Box::pin(async move {
            use object_store::ObjectStoreExt as _;
            let path = format!("data/{}.bin", uuid::Uuid::new_v4());
            checkpoint.record_in_flight(&path).await?;
            let content = batch.num_rows().to_string();
            self.table
                .files
                .put(
                    &Path::from(path.as_str()),
                    PutPayload::from(content.clone()),
                )
                .await
                .map_err(|e| tidemark::Error::Sink {
                    table: "memory-table".into(),
                    source: Box::new(e),
                })?;
            checkpoint
                .stage_file(tidemark::store::FileRecord {
                    path,
                    file_size_bytes: content.len() as u64,
                    record_count: batch.num_rows() as u64,
                    table_metadata: tidemark::store::TableFileMetadata {
                        format: "memory".into(),
                        version: 1,
                        body: serde_json::Value::Null,
                    },
                })
                .await
        })
    }

    fn finish<'a>(
        &'a mut self,
        _checkpoint: &'a mut tidemark::store::CheckpointWriter,
    ) -> futures::future::BoxFuture<'a, tidemark::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// The region of row `id` in the sink tests' tables: `eu`, `us/east` or none
/// (pyiceberg_append.py fills it by the same rule).
pub fn region(id: i64) -> Option<&'static str> {
    match id % 3 {
        0 => Some("eu"),
        1 => Some("us/east"),
        _ => None,
    }
}

/// One row of the sink tests' tables as the readers print it: `id`,
/// `region`, `payload`.
pub type Row = (i64, Option<String>, Option<String>);

/// The row the sink tests (and pyiceberg_append.py) write for `id`.
pub fn row(id: i64) -> Row {
    (
        id,
        region(id).map(str::to_string),
        Some(format!("payload of {id}")),
    )
}

/// Each reader's rows (as `*_read.py` prints them) are exactly the rows of
/// `ids`, in order, every value.
pub fn assert_rows(readers: &[(&'static str, serde_json::Value)], ids: &[i64]) {
    let expected: Vec<Row> = ids.iter().map(|id| row(*id)).collect();
    for (reader, read) in readers {
        assert_eq!(
            read["columns"],
            serde_json::json!(["id", "region", "payload"]),
            "{reader}'s columns"
        );
        let rows: Vec<Row> = serde_json::from_value(read["rows"].clone()).unwrap();
        assert_eq!(rows, expected, "{reader} sees every value");
    }
}

/// Every checkpointed key of a store with one int64 key column, read back
/// through the store, in order.
pub async fn checkpointed_ids(store: &CheckpointStore) -> Vec<i64> {
    let state = store.load().await.expect("load");
    let mut out = Vec::new();
    for file in state.key_files() {
        for batch in store.read_keys(&file).await.expect("read keys") {
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .expect("int64 keys");
            out.extend(column.values().iter().copied());
        }
    }
    out.sort_unstable();
    out
}
