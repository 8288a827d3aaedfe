//! Hot reload (SPEC §6): the one task that publishes snapshots.
//!
//! Owns: every change to the live snapshot — file changes (inotify through
//! `notify`, coalesced), a periodic poll that catches what notifications
//! miss, SIGHUP, `POST /v1/reload`, and credential updates from the admin
//! API. One writer means no update can be lost between a build and its
//! publication.
//!
//! Invariants:
//! - File-driven reloads are content-based: the watched files are hashed,
//!   and a reload happens only when the hashes changed. Unrelated events in
//!   a watched directory cost a hash and nothing else.
//! - Nothing half-written is published: the files must hash the same across
//!   a settle window before the build and still after it, or the build is
//!   thrown away and retried. Writers should still write-then-rename.
//! - Directories are watched, not files, so Kubernetes volume updates (a
//!   `..data` symlink swapped by rename) and editors' rename-on-save are seen.
//! - A failed reload changes nothing, is logged once per distinct content
//!   with every problem and file named, and counts in
//!   `iron_proxy_reload_failures_total`.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::app::Shared;
use crate::config::{Config, Source};
use crate::secret::Secret;
use crate::store::{BuildContext, BuildMode, Snapshot};
use crate::swap::Credential;

/// How long files must hold still before and after a build.
const SETTLE: Duration = Duration::from_millis(100);
/// Hashing rounds within one settle window.
const SAMPLES: u32 = 5;
/// Settle rounds before giving up until the next change or poll.
const MAX_UNSTABLE_ROUNDS: usize = 50;

#[derive(Debug)]
enum Request {
    Now(oneshot::Sender<Result<u64, String>>),
    SetCredentials {
        values: Vec<(String, Secret)>,
        persist: Persist,
        reply: oneshot::Sender<Result<Vec<Credential>, SetError>>,
    },
}

/// How a new value must reach the credential's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Written to its file first; nothing changes if that fails, and an
    /// `env` source is refused (admin API).
    Required,
    /// Swapped in memory even when it cannot be written: the value was
    /// already obtained (OAuth refresh; the old refresh token may be spent)
    /// and losing it would be worse. A failed write is logged.
    BestEffort,
}

/// Why `PUT /v1/credentials/{name}` did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("no credential is named `{0}`")]
    NotFound(String),
    #[error(
        "credential `{name}` reads its value from the environment variable {var}, which the \
         proxy cannot change; switch its source to a file or update the variable and restart"
    )]
    EnvSource { name: String, var: String },
    #[error("cannot write the new value of `{name}` to {path}: {source}; nothing was changed")]
    Write {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the reload task is not running")]
    Stopped,
}

/// Asks the reload task for work; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    files: Arc<Notify>,
    /// Change events seen by the watcher, ever: a settle window with an
    /// event in it is not settled, whatever the samples say.
    events: Arc<AtomicU64>,
}

/// Call before building the first snapshot from `config`: the hashes taken
/// then are the baseline, so a change racing the first build is not missed.
pub fn channel(config: &Config) -> (Handle, Receiver) {
    let (tx, rx) = mpsc::channel(16);
    let files = Arc::new(Notify::new());
    let baseline = fingerprint(&watched_files(config));
    let handle = Handle {
        tx,
        files: files.clone(),
        events: Arc::default(),
    };
    (
        handle,
        Receiver {
            rx,
            files,
            baseline,
        },
    )
}

#[derive(Debug)]
pub struct Receiver {
    rx: mpsc::Receiver<Request>,
    files: Arc<Notify>,
    baseline: Fingerprint,
}

impl Receiver {
    /// Takes the baseline again, after a first build that wrote files
    /// itself (a generated development CA), so that is not seen as a change.
    pub fn rebaseline(&mut self, config: &Config) {
        self.baseline = fingerprint(&watched_files(config));
    }
}

impl Handle {
    /// Reloads everything from disk now (SIGHUP, `POST /v1/reload`);
    /// returns the new generation or every problem found.
    pub async fn reload_now(&self) -> Result<u64, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Now(reply))
            .await
            .map_err(|_| "the reload task is not running".to_owned())?;
        rx.await.map_err(|_| "the reload task stopped".to_owned())?
    }

    /// Stores a new real value: to its file (atomically) and in memory.
    pub async fn set_credential(&self, name: &str, value: Secret) -> Result<Credential, SetError> {
        let values = vec![(name.to_owned(), value)];
        let mut updated = self.set_credentials(values, Persist::Required).await?;
        updated
            .pop()
            .ok_or_else(|| SetError::NotFound(name.to_owned()))
    }

    /// Stores several values in one snapshot: readers see all or none.
    pub async fn set_credentials(
        &self,
        values: Vec<(String, Secret)>,
        persist: Persist,
    ) -> Result<Vec<Credential>, SetError> {
        let (reply, rx) = oneshot::channel();
        let req = Request::SetCredentials {
            values,
            persist,
            reply,
        };
        self.tx.send(req).await.map_err(|_| SetError::Stopped)?;
        rx.await.map_err(|_| SetError::Stopped)?
    }

    /// A watched file may have changed (coalesced: many calls, one check).
    pub fn files_changed(&self) {
        self.events.fetch_add(1, Ordering::SeqCst);
        self.files.notify_one();
    }
}

type Fingerprint = Vec<(PathBuf, Option<[u8; 32]>)>;

struct Reloader {
    shared: Arc<Shared>,
    /// The files hashed and watched: those of the live config, plus those of
    /// the last failed attempt.
    files: Vec<PathBuf>,
    /// Their hashes when the live snapshot (or the last failed attempt) was
    /// built.
    fingerprint: Fingerprint,
    watcher: Option<RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
}

/// Runs until shutdown.
pub async fn run(shared: Arc<Shared>, mut rx: Receiver) {
    let snap = shared.store.load();
    let mut r = Reloader {
        files: watched_files(&snap.config),
        fingerprint: std::mem::take(&mut rx.baseline),
        shared: shared.clone(),
        watcher: None,
        watched: BTreeSet::new(),
    };
    r.rewatch();
    let mut poll = tokio::time::interval(snap.config.reload.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    drop(snap);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            req = rx.rx.recv() => match req {
                Some(Request::Now(reply)) => {
                    let _ = reply.send(r.reload(true).await);
                }
                Some(Request::SetCredentials { values, persist, reply }) => {
                    let _ = reply.send(r.set_credentials(values, persist));
                }
                None => return,
            },
            _ = rx.files.notified() => {
                tokio::time::sleep(SETTLE).await;
                let _ = r.reload(false).await;
            }
            _ = poll.tick() => {
                let _ = r.reload(false).await;
            }
        }
    }
}

impl Reloader {
    /// Rebuilds from disk. Unless `forced`, does nothing when the watched
    /// files hash as before.
    async fn reload(&mut self, forced: bool) -> Result<u64, String> {
        let current = self.shared.store.load();
        let files = self.files.clone();
        if !forced && fingerprint(&files) == self.fingerprint {
            return Ok(current.generation);
        }
        let Some(before) = settled(&files, &self.shared.reload.events).await else {
            tracing::warn!("watched files keep changing; will retry on the next change or poll");
            return Err("watched files keep changing; retry when writers are done".into());
        };
        if !forced && before == self.fingerprint {
            return Ok(current.generation); // rewritten with the same bytes
        }
        let events = self.shared.reload.events.load(Ordering::SeqCst);
        let config = Config::load(&current.config.path);
        // A failed attempt may name files the live config does not (a
        // credential file not created yet): watch those too, so creating
        // them retries.
        let mut attempted = watched_files(&current.config);
        if let Ok(c) = &config {
            attempted.extend(
                watched_files(c)
                    .into_iter()
                    .filter(|f| !attempted.contains(f))
                    .collect::<Vec<_>>(),
            );
        }
        let attempted_fingerprint = fingerprint(&attempted);
        let cx = BuildContext {
            provider: &self.shared.provider,
            metrics: &self.shared.metrics,
            mode: BuildMode::Run,
        };
        let built = config
            .map_err(|e| e.to_string())
            .and_then(|c| Snapshot::build(c, Some(&current), cx).map_err(|ps| problems_text(&ps)));
        if fingerprint(&files) != before
            || self.shared.reload.events.load(Ordering::SeqCst) != events
        {
            // A writer got in during the build: what was read may be torn.
            self.shared.reload.files_changed();
            return Err("a watched file changed during the reload; retrying".into());
        }
        match built {
            Ok(next) => Ok(self.publish(next, &current)),
            Err(problems) => {
                self.files = attempted;
                self.fingerprint = attempted_fingerprint;
                self.rewatch();
                self.shared.metrics.reload_failures.inc();
                tracing::error!(problems = %problems, "reload failed; still serving generation {}", current.generation);
                Err(problems)
            }
        }
    }

    fn publish(&mut self, next: Snapshot, current: &Snapshot) -> u64 {
        if next.config.listen != current.config.listen
            || next.config.limits.max_connections != current.config.limits.max_connections
        {
            tracing::warn!(
                "listen addresses and limits.max_connections take effect only after a restart"
            );
        }
        let generation = next.generation;
        let ca_changed = next.ca_generation != current.ca_generation;
        let config = next.config.clone();
        self.shared
            .metrics
            .generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.shared
            .metrics
            .ca_generation
            .set(i64::try_from(next.ca_generation).unwrap_or(i64::MAX));
        self.shared.store.replace(next);
        self.shared.metrics.reloads.inc();
        self.files = watched_files(&config);
        self.fingerprint = fingerprint(&self.files);
        self.rewatch();
        tracing::info!(generation, ca_changed, "reloaded");
        generation
    }

    fn set_credentials(
        &mut self,
        values: Vec<(String, Secret)>,
        persist: Persist,
    ) -> Result<Vec<Credential>, SetError> {
        let current = self.shared.store.load();
        for (name, _) in &values {
            let cred = current
                .credential(name)
                .ok_or_else(|| SetError::NotFound(name.clone()))?;
            if let (Source::Env(var), Persist::Required) = (&cred.source, persist) {
                return Err(SetError::EnvSource {
                    name: name.clone(),
                    var: var.clone(),
                });
            }
        }
        let mut next = (*current).clone();
        for (name, value) in values.iter().cloned() {
            if let Err(e) = persist_value(&current, &name, &value) {
                match persist {
                    Persist::Required => return Err(e),
                    Persist::BestEffort => {
                        tracing::error!(error = %e, "kept the new value in memory only; it is lost on restart")
                    }
                }
            }
            next = next
                .with_credential(&name, value)
                .ok_or_else(|| SetError::NotFound(name.clone()))?;
        }
        next.generation = current.generation + 1;
        let updated: Vec<Credential> = values
            .iter()
            .filter_map(|(n, _)| next.credential(n).cloned())
            .collect();
        self.publish(next, &current);
        for c in &updated {
            tracing::info!(credential = %c.name, sha256 = %c.real.sha256_prefix(), "credential updated");
        }
        Ok(updated)
    }

    /// Watches the directories holding every watched file.
    fn rewatch(&mut self) {
        let dirs: BTreeSet<PathBuf> = self
            .files
            .iter()
            .map(|f| match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            })
            .collect();
        if dirs == self.watched && self.watcher.is_some() {
            return;
        }
        let handle = self.shared.reload.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Opens and reads (our own hashing among them) change nothing.
            if event.is_ok_and(|e| !e.kind.is_access()) {
                handle.files_changed();
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; relying on the poll every reload.poll_interval");
                return;
            }
        };
        for dir in &dirs {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; its files are polled");
            }
        }
        self.watcher = Some(watcher);
        self.watched = dirs;
    }
}

fn persist_value(snap: &Snapshot, name: &str, value: &Secret) -> Result<(), SetError> {
    match snap.credential(name).map(|c| &c.source) {
        Some(Source::File(path)) => {
            write_atomically(path, value.expose().as_bytes()).map_err(|source| SetError::Write {
                name: name.to_owned(),
                path: path.clone(),
                source,
            })
        }
        Some(Source::Env(var)) => Err(SetError::EnvSource {
            name: name.to_owned(),
            var: var.clone(),
        }),
        None => Err(SetError::NotFound(name.to_owned())),
    }
}

/// Every file a snapshot is built from.
fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![
        config.path.clone(),
        config.ca.cert.clone(),
        config.ca.key.clone(),
    ];
    files.extend(config.ca.extra_trust.iter().cloned());
    files.extend(config.upstream.extra_roots.iter().cloned());
    files.extend(config.admin.token_file.iter().cloned());
    files.extend(config.credentials.iter().filter_map(|c| match &c.source {
        Source::File(p) => Some(p.clone()),
        Source::Env(_) => None,
    }));
    files
}

fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files
        .iter()
        .map(|f| {
            (
                f.clone(),
                std::fs::read(f).ok().map(|b| Sha256::digest(&b).into()),
            )
        })
        .collect()
}

/// The fingerprint once the files hold still for `SETTLE`.
async fn settled(files: &[PathBuf], events: &AtomicU64) -> Option<Fingerprint> {
    for _ in 0..MAX_UNSTABLE_ROUNDS {
        let seen = events.load(Ordering::SeqCst);
        let first = fingerprint(files);
        let mut stable = true;
        // Several samples, so a writer cycling in step with the window
        // cannot look still to two of them.
        for _ in 0..SAMPLES {
            tokio::time::sleep(SETTLE / SAMPLES).await;
            if fingerprint(files) != first {
                stable = false;
                break;
            }
        }
        if stable && events.load(Ordering::SeqCst) == seen {
            return Some(first);
        }
    }
    None
}

fn problems_text(problems: &[crate::config::Problem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Replaces a file's content so that no reader ever sees a partial value:
/// temp file in the same directory (mode 0600), fsync, rename, fsync the
/// directory. A symlink (Kubernetes volume) is followed to its target.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path)?,
        _ => path.to_owned(),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.iron-proxy-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("..2026_01");
        std::fs::create_dir(&real_dir).unwrap();
        std::fs::write(real_dir.join("token"), "old\n").unwrap();
        let link = dir.path().join("token");
        std::os::unix::fs::symlink(real_dir.join("token"), &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new\n");
        let leftovers: Vec<_> = std::fs::read_dir(&real_dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
    }

    #[tokio::test]
    async fn settled_waits_for_stable_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, "a").unwrap();
        let files = vec![f.clone()];
        let writer = tokio::spawn(async move {
            for i in 0..5 {
                std::fs::write(&f, format!("a{i}")).unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
        let fp = settled(&files, &AtomicU64::new(0)).await.unwrap();
        writer.await.unwrap();
        assert_eq!(
            fp,
            fingerprint(&files),
            "settled before the writer finished"
        );
    }
}
