//! Files the server reloads while it runs (TLS certificates, the watcher
//! policy, resource lists): on SIGHUP and when one of them changes, looked
//! at every [`WATCH_EVERY`]. A reload that fails keeps what was loaded
//! before, says why in the log, and waits for the next change (a broken
//! file is not retried every tick). Whoever must act on a new value (the
//! compositor deciding pending watchers again) waits on [`Reloadable::changes`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the files are looked at for changes (SIGHUP reloads at once).
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

type Loader<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// A value loaded from files, reloadable.
pub struct Reloadable<T> {
    /// What it is, for the log ("TLS certificate", "watcher policy").
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Option<Loader<T>>,
    current: RwLock<Arc<T>>,
    /// Modification times of the files at the last load.
    stamps: Mutex<Vec<Option<SystemTime>>>,
    /// Counts successful reloads.
    generation: watch::Sender<u64>,
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    /// Load from `paths` with `load`, or say what is wrong.
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, String> {
        let stamps = stamps(&paths);
        let value = load()?;
        Ok(Arc::new(Reloadable {
            what,
            paths,
            load: Some(Box::new(load)),
            current: RwLock::new(Arc::new(value)),
            stamps: Mutex::new(stamps),
            generation: watch::Sender::new(0),
        }))
    }

    /// A value from no file: it never changes.
    pub fn fixed(what: &'static str, value: T) -> Arc<Self> {
        Arc::new(Reloadable {
            what,
            paths: Vec::new(),
            load: None,
            current: RwLock::new(Arc::new(value)),
            stamps: Mutex::new(Vec::new()),
            generation: watch::Sender::new(0),
        })
    }

    /// The value loaded last.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Told after each successful reload.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Load the files again; on error the previous value stays.
    pub fn reload(&self) -> Result<(), String> {
        let Some(load) = &self.load else {
            return Ok(());
        };
        let stamps = stamps(&self.paths);
        let result = load();
        // A broken file is looked at again when it changes, not every tick.
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        let value = result?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
        self.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Did a file change since the last load?
    fn changed(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) != stamps(&self.paths)
    }

    /// Reload on SIGHUP and when a file changes, until `shutdown`.
    /// `on_reload(ok)` counts each attempt. Nothing to watch without files.
    pub async fn watch(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
        on_reload: impl Fn(bool) + Send + 'static,
    ) {
        if self.load.is_none() {
            return;
        }
        let what = self.what;
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, what, "no SIGHUP handler; reloaded when a file changes");
                None
            }
        };
        loop {
            let why = tokio::select! {
                _ = async {
                    match hup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => "SIGHUP",
                _ = tokio::time::sleep(WATCH_EVERY) => {
                    if !self.changed() {
                        continue;
                    }
                    "a file changed"
                }
                _ = shutdown.changed() => return,
            };
            let file = self.paths.first().map(|p| p.display().to_string());
            match self.reload() {
                Ok(()) => {
                    tracing::info!(file, why, "{what} reloaded");
                    on_reload(true);
                }
                Err(e) => {
                    tracing::warn!(error = %e, file, why, "{what} not reloaded; the previous one stays");
                    on_reload(false);
                }
            }
        }
    }
}

/// What [`Reloadable::watch_boxed`] returns: a watch to spawn.
pub type Watch = Box<
    dyn FnOnce(
            watch::Receiver<bool>,
            Box<dyn Fn(bool) + Send>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send,
>;

impl<T: Send + Sync + 'static> Reloadable<T> {
    /// [`Reloadable::watch`] as a value, so that reloadables of different
    /// types are watched by one loop.
    pub fn watch_boxed(self: Arc<Self>) -> Watch {
        Box::new(move |shutdown, on_reload| Box::pin(self.watch(shutdown, on_reload)))
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reload_takes_a_good_file_and_keeps_the_value_on_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.txt");
        std::fs::write(&path, "1").unwrap();
        let p = path.clone();
        let r = Reloadable::new("number", vec![path.clone()], move || {
            let text = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
            text.trim().parse::<u32>().map_err(|e| e.to_string())
        })
        .unwrap();
        let mut changes = r.changes();
        assert_eq!(*r.current(), 1);
        std::fs::write(&path, "2").unwrap();
        r.reload().unwrap();
        assert_eq!(*r.current(), 2);
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        std::fs::write(&path, "two").unwrap();
        assert!(r.reload().is_err());
        assert_eq!(*r.current(), 2, "a bad file keeps the previous value");
        assert!(!changes.has_changed().unwrap());
        assert!(!r.changed(), "a bad file is not retried until it changes");
        let fixed = Reloadable::fixed("number", 7u32);
        assert!(fixed.reload().is_ok());
        assert_eq!(*fixed.current(), 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
