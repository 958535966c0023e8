//! Diagnostics. libswapper never prints to stdout: messages go to a callback the
//! caller installs, or to stderr when the environment variable `SWAPPER_LOG` names
//! a level (`error`, `warn`, `info`, `debug`, `trace`), or nowhere.

use std::ffi::CString;
use std::sync::{LazyLock, RwLock};

/// How important a log message is. Lower values are more important.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something was degraded (a fallback, a limit hit) but the call went on.
    Warn = 2,
    /// A one-time fact worth knowing (the backend chosen).
    Info = 3,
    /// Detail for debugging.
    Debug = 4,
    /// Per-operation detail.
    Trace = 5,
}

c_enum!(LogLevel, "log level", [Error "error", Warn "warn", Info "info", Debug "debug", Trace "trace"]);

impl LogLevel {
    /// Parses a level as used in `SWAPPER_LOG`: its name (or "warning"), or its number.
    pub fn parse(s: &str) -> Option<LogLevel> {
        let s = s.trim().to_ascii_lowercase();
        let s = if s == "warning" { "warn" } else { s.as_str() };
        LogLevel::ALL
            .iter()
            .copied()
            .find(|level| level.name() == s || (*level as i32).to_string() == s)
    }
}

/// A Rust log function.
pub type RustSink = Box<dyn Fn(LogLevel, &str) + Send + Sync>;

/// A log sink: a C callback with its user pointer, or a Rust closure (for tests and tools).
pub enum Sink {
    /// A C function called with the level, a NUL-terminated message and the user pointer.
    C {
        callback: extern "C" fn(LogLevel, *const libc::c_char, *mut libc::c_void),
        user_data: usize,
    },
    /// A Rust function.
    Rust(RustSink),
}

struct Logger {
    sink: Option<Sink>,
    max_level: Option<LogLevel>,
}

static LOGGER: LazyLock<RwLock<Logger>> = LazyLock::new(|| {
    let max_level = std::env::var("SWAPPER_LOG")
        .ok()
        .and_then(|v| LogLevel::parse(&v));
    RwLock::new(Logger {
        sink: None,
        max_level,
    })
});

/// Installs `sink` for messages at `max_level` and more important ones; `None` removes
/// the sink (messages then go to stderr if `SWAPPER_LOG` is set, else nowhere).
pub fn set_sink(sink: Option<Sink>, max_level: LogLevel) {
    let mut logger = LOGGER.write().unwrap_or_else(|e| e.into_inner());
    logger.max_level = match sink {
        Some(_) => Some(max_level),
        None => std::env::var("SWAPPER_LOG")
            .ok()
            .and_then(|v| LogLevel::parse(&v)),
    };
    logger.sink = sink;
}

/// Whether a message at `level` would go anywhere.
pub fn enabled(level: LogLevel) -> bool {
    let logger = LOGGER.read().unwrap_or_else(|e| e.into_inner());
    logger.max_level.is_some_and(|max| level <= max)
}

/// Sends one message. Use the [`log!`](crate::log!) macro instead.
pub fn emit(level: LogLevel, args: std::fmt::Arguments<'_>) {
    let logger = LOGGER.read().unwrap_or_else(|e| e.into_inner());
    if logger.max_level.is_none_or(|max| level > max) {
        return;
    }
    let text = args.to_string();
    match &logger.sink {
        Some(Sink::C { callback, user_data }) => {
            let c = CString::new(text.replace('\0', " ")).unwrap_or_default();
            callback(level, c.as_ptr(), *user_data as *mut libc::c_void);
        }
        Some(Sink::Rust(f)) => f(level, &text),
        None => eprintln!("libswapper {}: {text}", level.name()),
    }
}

/// `log!(Warn, "format", args...)`: formats only when the level is enabled.
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)+) => {
        if $crate::log::enabled($crate::log::LogLevel::$level) {
            $crate::log::emit($crate::log::LogLevel::$level, format_args!($($arg)+));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_levels() {
        assert_eq!(LogLevel::parse("WARN"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse(" debug "), Some(LogLevel::Debug));
        assert_eq!(LogLevel::parse("loud"), None);
        assert_eq!(LogLevel::from_raw(3), Some(LogLevel::Info));
        assert_eq!(LogLevel::from_raw(0), None);
    }
}
