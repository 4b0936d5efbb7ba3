//! The one way out for text: everything the command prints (messages, errors
//! and their causes, log lines, panic messages) passes through the process's
//! [`Secrets`] first, so a secret given on the command line or in the
//! environment never reaches a log, even when a dependency echoes it.

use std::io::Write;
use std::sync::OnceLock;

use tidemark::redact::Secrets;

static SECRETS: OnceLock<Secrets> = OnceLock::new();

/// Prefixes of the environment variables whose secrets the process may use
/// (object stores and catalogs). Others (a desktop's `XDG_SESSION_CLASS=user`,
/// say) are not taken: masking their values everywhere would garble output.
const SECRET_ENV_PREFIXES: [&str; 8] = [
    "AWS_",
    "AZURE_",
    "GOOGLE_",
    "GCP_",
    "TIDEMARK_",
    "ICEBERG_",
    "PG",
    "DATABASE_",
];

/// Gathers the secrets of this process's arguments and environment. Call once,
/// first thing.
pub(crate) fn gather() {
    let args: Vec<String> = std::env::args().collect();
    let env = std::env::vars()
        .filter(|(name, _)| SECRET_ENV_PREFIXES.iter().any(|p| name.starts_with(p)));
    let secrets = Secrets::gather(args.iter().map(String::as_str), env);
    let _ = SECRETS.set(secrets);
}

/// `text` with every secret of the process masked.
pub(crate) fn scrub(text: &str) -> String {
    match SECRETS.get() {
        Some(secrets) => secrets.scrub(text),
        None => text.to_string(),
    }
}

/// Prints a panic's message scrubbed, in place of the default hook.
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        let place = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!("{}", scrub(&format!("panicked{place}: {message}")));
    }));
}

/// A log writer: stderr, each write scrubbed. The log formatter writes one
/// event at a time, so a secret is never split across two writes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ScrubbedStderr;

impl Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ScrubbedStderr {
    type Writer = ScrubbedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbedStderr
    }
}

/// Prints a line on stdout, scrubbed.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", $crate::shown::scrub(&format!($($arg)*)))
    };
}
pub(crate) use say;
