//! The extension host: the untrusted zone. It connects to the kernel's socket, loads the
//! plugins the kernel names, restricts itself with Landlock to the plugin store files
//! and packages, and then serves plugin requests. It never receives a path to
//! `core.db`, and depends on nothing that knows the core schema.

mod api;
pub mod component;
pub mod runtime;
pub mod sandbox;
pub mod scheduler;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sovereign_db_plugins::StoreLocation;
use sovereign_protocol::{
    HostToKernel, KernelToHost, PluginLoad, SandboxStatus, VERSION, read_frame,
};

use crate::runtime::{EPOCH_TICK, Runtime};
use crate::scheduler::Scheduler;

/// A plugin request waiting for a worker.
struct PluginJob {
    id: u64,
    request: sovereign_protocol::HttpRequest,
    caller: sovereign_protocol::Caller,
    /// When it arrived: its deadline counts from here, queueing included.
    received: Instant,
}

/// How much memory SQLite may allocate in the host, whatever plugins query: a wide row
/// of large values fails with "out of memory" instead of growing the process.
pub const SQLITE_HEAP_LIMIT: i64 = 256 * 1024 * 1024;

/// How the kernel started this host.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The kernel's socket.
    pub socket: PathBuf,
    /// The SQLite plugin store files (`None`: the plugin store is on PostgreSQL, and
    /// each plugin's spec says how its role logs in).
    pub location: Option<StoreLocation>,
    /// The plugin packages directory (read-only).
    pub packages: PathBuf,
    /// Exit instead of running unsandboxed.
    pub require_sandbox: bool,
    /// Threads serving requests.
    pub workers: usize,
}

/// How often undelivered events are offered to the kernel again.
const RELAY_INTERVAL: Duration = Duration::from_secs(2);

type Writer = Arc<Mutex<UnixStream>>;

fn send(writer: &Writer, message: &HostToKernel) {
    let frame = match sovereign_protocol::encode(message) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a message for the kernel");
            return;
        }
    };
    let mut stream = writer.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = stream.write_all(&frame) {
        tracing::warn!(error = %e, "cannot write to the kernel");
    }
}

fn with_suffix(path: &std::path::Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// Runs the host until the kernel disconnects or says shut down.
pub fn run(options: HostOptions) -> anyhow::Result<()> {
    // The kernel decides when the host ends (it says so, or its socket closes); a
    // SIGTERM or SIGINT sent to the whole process group or service is the kernel's to
    // handle, so that a shutdown never looks like a crash.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let stream = UnixStream::connect(&options.socket)
        .with_context(|| format!("connecting to the kernel at {}", options.socket.display()))?;
    // Buffered: under load several frames arrive per read.
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let writer: Writer = Arc::new(Mutex::new(stream));

    let Some(KernelToHost::Configure { version, plugins }) = read_frame(&mut reader)? else {
        bail!("the kernel did not send the configuration first");
    };
    if version != VERSION {
        bail!("protocol version {version} from the kernel, this host speaks {VERSION}");
    }
    sovereign_db_plugins::limit_sqlite_heap(SQLITE_HEAP_LIMIT);
    let runtime = Runtime::load(
        Runtime::engine()?,
        options.location.as_ref(),
        &options.packages,
        &plugins,
    )?;

    let mut allowed = sandbox::Allowed {
        read_write_files: vec![],
        read_write_dirs: vec![],
        read_only: vec![options.packages.clone()],
    };
    // Held open for the host's lifetime: the shared store's -wal and -shm must exist
    // for the sandbox rules below (SQLite removes them when the last connection closes).
    let mut _shared_store_files = None;
    if let Some(location) = &options.location {
        _shared_store_files = sovereign_db_plugins::open_shared_store(&location.shared_store)
            .map_err(|e| tracing::warn!(error = %e, "cannot open the shared plugin store"))
            .ok();
        // Everything is open and compiled: from here on the host can only touch the
        // plugin store files and read the packages.
        let shared = &location.shared_store;
        allowed.read_write_files.extend([
            shared.clone(),
            with_suffix(shared, "-wal"),
            with_suffix(shared, "-shm"),
        ]);
        allowed.read_write_dirs.push(location.isolated_dir.clone());
        if let Some(mirror) = &location.mirror_file {
            allowed.read_only.push(mirror.clone());
            allowed.read_only.push(with_suffix(mirror, "-wal"));
            // Readers of a WAL file write its shared-memory index.
            allowed.read_write_files.push(with_suffix(mirror, "-shm"));
        }
        std::fs::create_dir_all(&location.isolated_dir).ok();
    }
    let sandbox = sandbox::restrict(&allowed);
    match &sandbox {
        SandboxStatus::Enforced => tracing::info!("sandboxed with Landlock"),
        other if options.require_sandbox => {
            bail!(
                "--require-sandbox: the host cannot be sandboxed ({other:?}); refusing to run plugins"
            )
        }
        other => tracing::error!(
            status = ?other,
            "THE EXTENSION HOST IS NOT SANDBOXED: plugins run without the OS-level wall around the plugin store"
        ),
    }
    let loads = runtime
        .load_report()
        .into_iter()
        .map(|(id, error)| PluginLoad { id, error })
        .collect();
    send(
        &writer,
        &HostToKernel::Ready {
            version: VERSION,
            sandbox,
            plugins: loads,
        },
    );

    let runtime = Arc::new(runtime);
    {
        let engine = runtime.engine_handle().clone();
        std::thread::Builder::new()
            .name("sv-host-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?;
    }
    {
        let runtime = runtime.clone();
        let writer = writer.clone();
        std::thread::Builder::new()
            .name("sv-host-relay".into())
            .spawn(move || {
                loop {
                    let events = runtime.pending_events();
                    if !events.is_empty() {
                        send(&writer, &HostToKernel::Events { events });
                    }
                    std::thread::sleep(RELAY_INTERVAL);
                }
            })?;
    }

    // Plugin requests go through the fair scheduler; the platform's own work (event
    // acknowledgements) has a thread of its own and never queues behind
    // a plugin.
    let scheduler: Arc<Scheduler<PluginJob>> = Arc::new(Scheduler::new(scheduler::REQUEST_LANES));
    for n in 0..options.workers.max(1) {
        let scheduler = scheduler.clone();
        let runtime = runtime.clone();
        let writer = writer.clone();
        std::thread::Builder::new()
            .name(format!("sv-host-worker-{n}"))
            .spawn(move || {
                // Each worker drives its requests' futures (WASI waits, deadlines) itself.
                let executor = match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(executor) => executor,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a worker's executor");
                        return;
                    }
                };
                while let Some((plugin, job)) = scheduler.next() {
                    let handled =
                        runtime.handle(&executor, &plugin, job.request, job.caller, job.received);
                    scheduler.done(&plugin);
                    send(
                        &writer,
                        &HostToKernel::Response {
                            id: job.id,
                            result: handled.result,
                        },
                    );
                    if !handled.events.is_empty() {
                        send(
                            &writer,
                            &HostToKernel::Events {
                                events: handled.events,
                            },
                        );
                    }
                    if !handled.logs.is_empty() {
                        send(
                            &writer,
                            &HostToKernel::Logs {
                                lines: handled.logs,
                            },
                        );
                    }
                }
            })?;
    }
    // Event acknowledgements are marked delivered on a thread of their own.
    let (delivered, delivered_queue) = mpsc::channel::<Vec<String>>();
    {
        let runtime = runtime.clone();
        std::thread::Builder::new()
            .name("sv-host-platform".into())
            .spawn(move || {
                while let Ok(event_ids) = delivered_queue.recv() {
                    runtime.mark_delivered(&event_ids, runtime::now_ms());
                }
            })?;
    }

    loop {
        let message: Option<KernelToHost> = read_frame(&mut reader)?;
        match message {
            None | Some(KernelToHost::Shutdown) => break,
            Some(KernelToHost::Heartbeat { id }) => send(
                &writer,
                &HostToKernel::Alive {
                    id,
                    denials: sovereign_db_plugins::denial_counts().into_iter().collect(),
                },
            ),
            Some(KernelToHost::Probe { id, path }) => {
                let result = std::fs::File::open(&path)
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                send(&writer, &HostToKernel::ProbeResult { id, result });
            }
            Some(KernelToHost::Handle {
                id,
                plugin,
                request,
                caller,
            }) => scheduler.submit(
                &plugin,
                PluginJob {
                    id,
                    request,
                    caller,
                    received: Instant::now(),
                },
            ),
            Some(KernelToHost::EventsStored { event_ids }) => {
                if delivered.send(event_ids).is_err() {
                    break;
                }
            }
            Some(KernelToHost::Configure { .. }) => {
                tracing::warn!("ignoring a second configuration")
            }
        }
    }
    tracing::info!("extension host stopping");
    scheduler.close();
    Ok(())
}
