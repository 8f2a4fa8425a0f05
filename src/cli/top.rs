//! `corral top`: grant and use per node, tenant and replica, refreshed in place like
//! `systemd-cgtop`, from the embedded store of `corral run` or from ZooKeeper.
//!
//! The rows and their sums are computed in [`snapshot`] (pure); this module reads the
//! store, renders the table and keeps the terminal.

pub mod snapshot;

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{CellAlignment, Table, presets};
use crossterm::{cursor, execute, queue, terminal};

use self::snapshot::{Figures, Reading, Snapshot, SortKey};
use super::plan::human;
use super::status::Format;
use crate::alloc::resources::Kind;
use crate::lease::LeaseStore;
use crate::lease::embedded::EmbeddedStore;
use crate::lease::zookeeper::ZkStore;
use crate::state::StateDir;

/// How long `--once` waits at most for every busy replica's next sample.
const ONCE_WAIT: Duration = Duration::from_secs(10);
/// How often `--once` reads while it waits.
const ONCE_POLL: Duration = Duration::from_millis(250);

/// Arguments of `corral top`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// State directory of `corral run` (without --zookeeper).
    #[arg(
        long,
        env = "CORRAL_STATE_DIR",
        default_value = "/var/lib/corral",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
    /// Order of the nodes, and of the rows within each node and tenant.
    #[arg(long, value_enum, default_value_t)]
    pub sort: SortKey,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS", value_parser = super::seconds::interval)]
    pub interval: f64,
    /// Print one snapshot and exit (also when standard output is not a terminal).
    #[arg(long)]
    pub once: bool,
    /// Output format of the snapshot; json prints one snapshot.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Format,
    /// Read the whole cluster from ZooKeeper instead of the state directory.
    #[command(flatten)]
    pub zk: super::zk::ZkArgs,
}

/// Where the readings come from.
enum Source {
    /// `corral run`'s state directory.
    Embedded {
        store: EmbeddedStore,
        state: StateDir,
    },
    /// A cluster's ZooKeeper.
    Cluster(Arc<ZkStore>),
}

impl Source {
    /// Opens the state directory, or connects to ZooKeeper.
    async fn open(args: &Args) -> anyhow::Result<Source> {
        match args.zk.config()? {
            Some(config) => {
                let hosts = config.hosts.clone();
                let store = ZkStore::connect(config)
                    .await
                    .with_context(|| format!("cannot read the cluster from ZooKeeper {hosts}"))?;
                Ok(Source::Cluster(store))
            }
            None => {
                let store = EmbeddedStore::open_existing(&args.state_dir).with_context(|| {
                    format!(
                        "cannot read the state directory {} (give corral run's with --state-dir, or a cluster with --zookeeper)",
                        args.state_dir.display()
                    )
                })?;
                Ok(Source::Embedded {
                    store,
                    state: StateDir(args.state_dir.clone()),
                })
            }
        }
    }

    /// Leases, reports and which nodes' agents are alive, now.
    async fn read(&self) -> anyhow::Result<Reading> {
        let taken_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        match self {
            Source::Embedded { store, state } => {
                let context = || format!("reading the state directory {}", state.0.display());
                let registered: BTreeSet<String> = store
                    .nodes()
                    .await
                    .with_context(context)?
                    .into_iter()
                    .map(|n| n.name)
                    .collect();
                // The agent of the one node is `corral run` itself.
                let alive = if state.running_pid().is_some() {
                    registered.clone()
                } else {
                    BTreeSet::new()
                };
                Ok(Reading {
                    leases: store.leases().await.with_context(context)?,
                    reports: store.reports().await.with_context(context)?,
                    registered,
                    alive,
                    taken_at,
                })
            }
            Source::Cluster(store) => {
                let context = || "reading the cluster from ZooKeeper".to_string();
                let alive: BTreeSet<String> = store
                    .nodes()
                    .await
                    .with_context(context)?
                    .into_iter()
                    .map(|n| n.name)
                    .collect();
                Ok(Reading {
                    leases: store.leases().await.with_context(context)?,
                    reports: store.reports().await.with_context(context)?,
                    registered: alive.clone(),
                    alive,
                    taken_at,
                })
            }
        }
    }
}

/// Shows the table: redrawn every `--interval` on a terminal until Ctrl-C, or one snapshot
/// with `--once`, `-o json` or when standard output is not a terminal. Returns 0.
///
/// # Errors
/// The state directory or ZooKeeper cannot be read at start, or the output fails.
pub fn run(args: &Args) -> anyhow::Result<u8> {
    let interval = super::seconds::duration(args.interval);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let source = Source::open(args).await?;
        let live = !args.once && args.output == Format::Table && std::io::stdout().is_terminal();
        if live {
            watch(&source, args.sort, interval).await
        } else {
            once(&source, args).await
        }
    })?;
    Ok(0)
}

/// Reads twice, so that throttling has a rate: now, and again once every busy replica on a
/// live node has a newer sample (at most [`ONCE_WAIT`]). Prints that snapshot.
async fn once(source: &Source, args: &Args) -> anyhow::Result<()> {
    let first = Snapshot::build(&source.read().await?, None, args.sort);
    let deadline = tokio::time::Instant::now() + ONCE_WAIT;
    let mut last = source.read().await?;
    while !Snapshot::build(&last, Some(&first), args.sort).fresh_since(&first)
        && tokio::time::Instant::now() < deadline
    {
        tokio::select! {
            _ = tokio::time::sleep(ONCE_POLL) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        last = source.read().await?;
    }
    let snapshot = Snapshot::build(&last, Some(&first), args.sort);
    let mut out = std::io::stdout().lock();
    match args.output {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &snapshot)?;
            writeln!(out)?;
        }
        Format::Table => {
            writeln!(out, "{}", summary(&snapshot))?;
            write!(out, "{}", render(&snapshot))?;
        }
    }
    Ok(())
}

/// The terminal in the alternate screen, in raw mode (keys arrive one by one, unechoed)
/// with the cursor hidden; restored on drop, also after an error.
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        // Dropped from here on, so that an error below restores the screen too.
        let screen = Screen;
        terminal::enable_raw_mode()?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
    }
}

/// What a key asks of the live view, as in `systemd-cgtop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    /// `q`, Esc or Ctrl-C.
    Quit,
    /// `c`, `m`, `t`, `n`: order by CPU, memory, throttling or name.
    Sort(SortKey),
    /// Space: read again now.
    Refresh,
    /// `+`: refresh twice as often.
    Faster,
    /// `-`: half as often.
    Slower,
    /// `p`: stop refreshing, or go on.
    Pause,
}

/// The help line of the keys.
const KEYS: &str = "q quit  c/m/t/n sort  space refresh  +/- interval  p pause";

impl Key {
    /// The key a terminal event is, if it is one.
    fn of(event: &crossterm::event::KeyEvent) -> Option<Key> {
        use crossterm::event::{KeyCode, KeyEventKind, KeyModifiers};
        if event.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = event.modifiers.contains(KeyModifiers::CONTROL);
        Some(match event.code {
            KeyCode::Char('c' | 'd') if ctrl => Key::Quit,
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => Key::Quit,
            KeyCode::Char('c' | 'C') => Key::Sort(SortKey::Cpu),
            KeyCode::Char('m' | 'M') => Key::Sort(SortKey::Memory),
            KeyCode::Char('t' | 'T') => Key::Sort(SortKey::Throttle),
            KeyCode::Char('n' | 'N') => Key::Sort(SortKey::Name),
            KeyCode::Char(' ') => Key::Refresh,
            KeyCode::Char('+' | '=') => Key::Faster,
            KeyCode::Char('-' | '_') => Key::Slower,
            KeyCode::Char('p' | 'P') => Key::Pause,
            _ => return None,
        })
    }
}

/// The shortest and longest refresh the keys reach.
const INTERVALS: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(60));

/// Reads the terminal's keys in a thread of its own (crossterm's read blocks) and sends
/// each one; ends when the receiver is gone or the terminal cannot be read.
fn keys() -> tokio::sync::mpsc::UnboundedReceiver<Key> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("top keys".into())
        .spawn(move || {
            while let Ok(event) = crossterm::event::read() {
                if let crossterm::event::Event::Key(key) = event
                    && let Some(key) = Key::of(&key)
                    && tx.send(key).is_err()
                {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot read keys; Ctrl-C still quits");
    }
    rx
}

/// Redraws every `interval` until `q` (or Ctrl-C, or SIGTERM), following the keys. A
/// failed reading keeps the last rows on screen, says why, and is tried again at the next
/// refresh.
async fn watch(source: &Source, mut sort: SortKey, mut interval: Duration) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut previous: Option<Snapshot> = None;
    // The last reading and the snapshot its rates came from, to sort it again on a key.
    let mut last: Option<(Reading, Option<Snapshot>)> = None;
    let mut reading = Ok(source.read().await?);
    let _screen = Screen::enter()?;
    let mut keys = keys();
    let mut paused = false;
    loop {
        let problem = match reading {
            Ok(r) => {
                let next = Snapshot::build(&r, previous.as_ref(), sort);
                last = Some((r, previous.replace(next)));
                None
            }
            Err(e) => Some(format!("reading failed, retrying: {e:#}")),
        };
        if let Some(snapshot) = &previous {
            draw(source, snapshot, interval, paused, problem.as_deref())?;
        }
        let mut read_now = false;
        while !read_now {
            tokio::select! {
                () = tokio::time::sleep(interval), if !paused => read_now = true,
                key = keys.recv() => match key {
                    Some(Key::Quit) => return Ok(()),
                    Some(Key::Sort(key)) => {
                        sort = key;
                        // Reorder what is on screen at once, with the same figures.
                        if let Some((r, before)) = &last {
                            previous = Some(Snapshot::build(r, before.as_ref(), sort));
                        }
                    }
                    Some(Key::Refresh) => read_now = true,
                    Some(Key::Faster) => interval = (interval / 2).max(INTERVALS.0),
                    Some(Key::Slower) => interval = (interval * 2).min(INTERVALS.1),
                    Some(Key::Pause) => paused = !paused,
                    // No keys to be had (not a terminal we can read): signals still quit.
                    None => std::future::pending::<()>().await,
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
            }
            if let Some(snapshot) = &previous {
                draw(source, snapshot, interval, paused, problem.as_deref())?;
            }
        }
        reading = source.read().await;
    }
}

/// One frame: a header, the table cut to the terminal's size, the rest of the screen
/// cleared.
fn draw(
    source: &Source,
    snapshot: &Snapshot,
    interval: Duration,
    paused: bool,
    problem: Option<&str>,
) -> std::io::Result<()> {
    // A terminal that does not know its size (0) is taken as unbounded.
    let unbounded = |n: u16| if n == 0 { usize::MAX } else { usize::from(n) };
    let (width, height) = terminal::size().map_or((usize::MAX, usize::MAX), |(w, h)| {
        (unbounded(w), unbounded(h))
    });
    let now = clock(snapshot.taken_at);
    let from = match source {
        Source::Embedded { state, .. } => state.0.display().to_string(),
        Source::Cluster(_) => "ZooKeeper".to_string(),
    };
    let pace = if paused {
        "paused".to_string()
    } else {
        format!("every {}s", interval.as_secs_f64())
    };
    let mut lines = vec![
        format!("corral top  {now} UTC  {from}  {pace}  {KEYS}"),
        summary(snapshot),
    ];
    if let Some(problem) = problem {
        lines.push(problem.to_string());
    }
    lines.extend(render(snapshot).lines().map(str::to_string));
    let mut out = std::io::stdout().lock();
    queue!(out, cursor::MoveTo(0, 0))?;
    for line in lines.iter().take(height) {
        let cut: String = line.chars().take(width).collect();
        queue!(out, crossterm::style::Print(cut))?;
        queue!(out, terminal::Clear(terminal::ClearType::UntilNewLine))?;
        queue!(out, crossterm::style::Print("\r\n"))?;
    }
    queue!(out, terminal::Clear(terminal::ClearType::FromCursorDown))?;
    out.flush()
}

/// `HH:MM:SS` of Unix seconds, in UTC.
fn clock(unix: f64) -> String {
    let seconds = unix.max(0.0) as u64 % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// `2 nodes (n2: agent gone), 3 tenants, 5 replicas; sorted by cpu`.
pub fn summary(snapshot: &Snapshot) -> String {
    let gone: Vec<&str> = snapshot
        .nodes
        .iter()
        .filter(|n| !n.agent_alive)
        .map(|n| n.name.as_str())
        .collect();
    let tenants: usize = snapshot.nodes.iter().map(|n| n.tenants.len()).sum();
    let replicas: usize = snapshot
        .nodes
        .iter()
        .flat_map(|n| &n.tenants)
        .map(|t| t.replicas.len())
        .sum();
    let gone = if gone.is_empty() {
        String::new()
    } else {
        format!(" ({}: agent gone, last report shown)", gone.join(", "))
    };
    let sort = match snapshot.sort {
        SortKey::Cpu => "cpu",
        SortKey::Memory => "memory",
        SortKey::Throttle => "throttle",
        SortKey::Name => "name",
    };
    format!(
        "{} nodes{gone}, {tenants} tenants, {replicas} replicas; sorted by {sort}",
        snapshot.nodes.len()
    )
}

/// The header of the table.
const HEADER: [&str; 14] = [
    "NAME",
    "CPU GRANT",
    "CPU USE",
    "CPU%",
    "MEM GRANT",
    "MEM USE",
    "MEM%",
    "THROTTLED",
    "OOM",
    "PIDS",
    "PSI CPU",
    "PSI MEM",
    "PSI IO",
    "STATE",
];

/// The snapshot as a table: a row per node, its tenants indented below it, their
/// replicas (`name.index`) below them. Use is blank where no report has any; pressure is
/// blank on cgroup v1.
pub fn render(snapshot: &Snapshot) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(HEADER);
    for i in 0..HEADER.len() {
        if let Some(column) = table.column_mut(i) {
            column.set_padding((0, 2));
            if i > 0 && i + 1 < HEADER.len() {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
    }
    for node in &snapshot.nodes {
        let state = if node.agent_alive { "" } else { "agent gone" };
        table.add_row(cells(node.name.clone(), &node.figures, state));
        for tenant in &node.tenants {
            table.add_row(cells(format!("  {}", tenant.name), &tenant.figures, ""));
            for replica in &tenant.replicas {
                table.add_row(cells(
                    format!("    {}.{}", replica.name, replica.replica),
                    &replica.figures,
                    &replica.state,
                ));
            }
        }
    }
    table
        .to_string()
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

/// One row's cells.
fn cells(name: String, f: &Figures, state: &str) -> Vec<String> {
    let amount = |kind: Kind, v: Option<i64>| v.map_or_else(String::new, |v| human(kind, v));
    let share = |used: Option<i64>, granted: i64| match used {
        Some(used) if granted > 0 => format!("{:.0}%", used as f64 * 100.0 / granted as f64),
        _ => String::new(),
    };
    let percent = |p: Option<f64>| p.map_or_else(String::new, |p| format!("{p:.1}%"));
    vec![
        name,
        human(Kind::Cpu, f.grant_cpu),
        amount(Kind::Cpu, f.cpu),
        share(f.cpu, f.grant_cpu),
        human(Kind::Memory, f.grant_memory),
        amount(Kind::Memory, f.memory),
        share(f.memory, f.grant_memory),
        f.throttled
            .map_or_else(String::new, |t| format!("{t:.2}s/s")),
        f.oom_kills.map_or_else(String::new, |n| n.to_string()),
        f.pids.map_or_else(String::new, |n| n.to_string()),
        percent(f.pressure.cpu),
        percent(f.pressure.memory),
        percent(f.pressure.io),
        state.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::snapshot::{NodeRow, Psi, ReplicaRow, TenantRow};
    use super::*;

    #[test]
    fn keys_sort_quit_pause_and_pace_as_in_systemd_cgtop() {
        use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
        let press = |code, modifiers| Key::of(&KeyEvent::new(code, modifiers));
        let none = KeyModifiers::NONE;
        assert_eq!(press(KeyCode::Char('q'), none), Some(Key::Quit));
        assert_eq!(press(KeyCode::Esc, none), Some(Key::Quit));
        assert_eq!(
            press(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Key::Quit)
        );
        assert_eq!(
            press(KeyCode::Char('c'), none),
            Some(Key::Sort(SortKey::Cpu))
        );
        assert_eq!(
            press(KeyCode::Char('M'), none),
            Some(Key::Sort(SortKey::Memory))
        );
        assert_eq!(
            press(KeyCode::Char('t'), none),
            Some(Key::Sort(SortKey::Throttle))
        );
        assert_eq!(
            press(KeyCode::Char('n'), none),
            Some(Key::Sort(SortKey::Name))
        );
        assert_eq!(press(KeyCode::Char(' '), none), Some(Key::Refresh));
        assert_eq!(press(KeyCode::Char('+'), none), Some(Key::Faster));
        assert_eq!(press(KeyCode::Char('-'), none), Some(Key::Slower));
        assert_eq!(press(KeyCode::Char('p'), none), Some(Key::Pause));
        assert_eq!(press(KeyCode::Char('x'), none), None);
        let mut release = KeyEvent::new(KeyCode::Char('q'), none);
        release.kind = KeyEventKind::Release;
        assert_eq!(Key::of(&release), None, "a release is not a second press");
    }
    use crate::alloc::plan::Limits;

    fn figures(cpu: Option<i64>, pressure: Psi) -> Figures {
        Figures {
            grant_cpu: 200,
            grant_memory: 64 << 20,
            cpu,
            memory: cpu.map(|_| 16 << 20),
            throttled: cpu.map(|_| 0.25),
            oom_kills: cpu.map(|_| 0),
            pids: cpu.map(|_| 3),
            pressure,
        }
    }

    fn snapshot(pressure: Psi, alive: bool) -> Snapshot {
        let f = figures(Some(150), pressure);
        Snapshot {
            taken_at: 0.0,
            sort: SortKey::Cpu,
            nodes: vec![NodeRow {
                name: "n1".into(),
                agent_alive: alive,
                figures: f,
                tenants: vec![TenantRow {
                    name: "shop".into(),
                    figures: f,
                    replicas: vec![
                        ReplicaRow {
                            name: "web".into(),
                            replica: 0,
                            state: "Running".into(),
                            limits: Limits::default(),
                            figures: f,
                            sample: None,
                            sampled_at: 0,
                        },
                        ReplicaRow {
                            name: "web".into(),
                            replica: 1,
                            state: snapshot::NO_REPORT.into(),
                            limits: Limits::default(),
                            figures: figures(None, Psi::default()),
                            sample: None,
                            sampled_at: 0,
                        },
                    ],
                }],
            }],
        }
    }

    fn words(table: &str, row: usize) -> Vec<String> {
        table
            .lines()
            .nth(row)
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_table_nests_tenants_and_replicas_under_their_node() {
        let table = render(&snapshot(Psi::default(), true));
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{table}");
        assert!(lines[1].starts_with("n1 "), "{table}");
        assert!(lines[2].starts_with("  shop "), "{table}");
        assert!(lines[3].starts_with("    web.0 "), "{table}");
        assert_eq!(
            words(&table, 3),
            [
                "web.0", "200m", "150m", "75%", "64Mi", "16Mi", "25%", "0.25s/s", "0", "3",
                "Running"
            ],
            "cgroup v1: the pressure cells are blank\n{table}"
        );
        assert_eq!(
            words(&table, 4),
            ["web.1", "200m", "64Mi", "NoReport"],
            "no report: grant only\n{table}"
        );
    }

    #[test]
    fn pressure_shows_where_the_kernel_gives_it_and_a_gone_agent_is_named() {
        let psi = Psi {
            cpu: Some(12.34),
            memory: Some(0.0),
            io: None,
        };
        let table = render(&snapshot(psi, false));
        assert_eq!(
            words(&table, 1),
            [
                "n1", "200m", "150m", "75%", "64Mi", "16Mi", "25%", "0.25s/s", "0", "3", "12.3%",
                "0.0%", "agent", "gone"
            ],
            "{table}"
        );
        let line = table.lines().nth(1).unwrap_or_default();
        let header = table.lines().next().unwrap_or_default();
        let io = header.find("PSI IO").unwrap_or(0) + "PSI IO".len();
        assert_eq!(
            line.get(io - 4..io).map(str::trim),
            Some(""),
            "no io.pressure: blank\n{table}"
        );
        assert!(
            summary(&snapshot(psi, false)).contains("n1: agent gone"),
            "{}",
            summary(&snapshot(psi, false))
        );
    }
}
