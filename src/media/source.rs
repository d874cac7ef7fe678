//! Live sources, tokio side: this module owns turning a video file into an endless live stream
//! of [`Chunk`]s sent on an mpsc channel, and the [`VideoLibrary`] that lists the playable files
//! of a folder and notices files added or removed later.
//!
//! Two modes: [`SourceMode::Ffmpeg`] runs `ffmpeg -re -stream_loop -1` (copying the codecs into
//! MPEG-TS when they fit, transcoding with libx264/aac otherwise; ffprobe decides) and cuts its
//! stdout with the [`Chunker`]; a dead child is restarted with backoff. [`SourceMode::Paced`]
//! reads a `.ts` file itself and releases it in real time with the [`Pacer`], starting on a
//! keyframe, so a server works without ffmpeg and a source starts in a few ms (no ffprobe, no
//! child). [`SourceMode::auto`] picks the paced reader for MPEG-TS
//! files it can pass on as they are ([`plays_as_is`]), ffmpeg for the rest. A full channel slows
//! the source down (backpressure); a closed channel stops it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::child::{self, Backoff, Ended, FfmpegChild, Supervised, VideoPipe, FFPROBE};
use super::pacer::{Pacer, PacerConfig, PacerError, PacerPoll};
use super::ts::{
    Chunk, Chunker, PsiTracker, TsError, DEFAULT_PACKETS_PER_CHUNK, PACKET_LEN, SYNC_BYTE,
};

/// File extensions the library offers (lower case). `.ts` plays in both modes; the others need
/// ffmpeg.
pub const PLAYABLE_EXTENSIONS: &[&str] = &[
    "ts", "m2ts", "mp4", "m4v", "mkv", "mov", "webm", "avi", "flv", "mpg", "mpeg",
];

/// Video codecs ffmpeg can copy into MPEG-TS unchanged.
const TS_VIDEO_CODECS: &[&str] = &["h264", "hevc", "mpeg2video", "mpeg1video"];
/// Audio codecs ffmpeg can copy into MPEG-TS unchanged.
const TS_AUDIO_CODECS: &[&str] = &["aac", "mp3", "mp2", "ac3", "eac3"];

/// PMT stream types (ISO 13818-1 table 2-34) of video the paced reader passes on as it is, the
/// ones `ffmpeg -c copy` would keep: MPEG-1/2, H.264, HEVC.
const PACED_VIDEO_TYPES: &[u8] = &[0x01, 0x02, 0x1B, 0x24];
/// The other stream types it passes on: MPEG audio, AAC (ADTS), AC-3, E-AC-3, private data
/// (DVB audio and subtitles), metadata, SCTE-35.
const PACED_OTHER_TYPES: &[u8] = &[0x03, 0x04, 0x0F, 0x81, 0x87, 0x06, 0x15, 0x86];
/// Bytes read from the head of a file to find its program tables.
const SNIFF_BYTES: u64 = 256 * 1024;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: the paced reader plays only MPEG-TS (.ts) files")]
    NotTs(PathBuf),
    #[error("{path}: ffprobe failed: {reason}")]
    Probe { path: PathBuf, reason: String },
    #[error("{0}: no video stream")]
    NoVideo(PathBuf),
    #[error("{path}: {source}")]
    Pacer {
        path: PathBuf,
        #[source]
        source: PacerError,
    },
    #[error(transparent)]
    Ts(#[from] TsError),
}

/// How a file becomes a live stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceMode {
    /// An ffmpeg child (`-re -stream_loop -1`), restarted when it dies.
    Ffmpeg,
    /// The built-in PCR-paced reader (`.ts` files only, no ffmpeg needed).
    Paced,
}

impl SourceMode {
    /// The paced reader for MPEG-TS files it can play as they are ([`plays_as_is`]: no child,
    /// no ffprobe, a start in a few ms); ffmpeg for the other files when installed, else the
    /// paced reader for any `.ts`; `None` when the file cannot be played at all on this host.
    pub fn auto(path: &Path) -> Option<SourceMode> {
        if plays_as_is(path) {
            Some(SourceMode::Paced)
        } else if child::ffmpeg_available() {
            Some(SourceMode::Ffmpeg)
        } else if is_ts(path) {
            Some(SourceMode::Paced)
        } else {
            None
        }
    }
}

/// Whether the paced reader can play `path` as ffmpeg would with `-c copy`: a `.ts` file of
/// 188-byte packets (not the 192-byte packets of BDAV `.m2ts`) whose program tables, found in
/// its first 256 KiB, list a video stream and only stream types that need no transcoding.
/// Reads the head of the file (blocking; a few hundred µs).
pub fn plays_as_is(path: &Path) -> bool {
    use std::io::Read;
    if !is_ts(path) {
        return false;
    }
    let mut head = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(SNIFF_BYTES).read_to_end(&mut head));
    let whole = head.len() / PACKET_LEN * PACKET_LEN;
    if read.is_err() || whole < 2 * PACKET_LEN {
        return false;
    }
    let head = &head[..whole];
    if !head.chunks_exact(PACKET_LEN).all(|p| p[0] == SYNC_BYTE) {
        return false;
    }
    let mut psi = PsiTracker::new();
    psi.observe(head);
    let Some(types) = psi.stream_types() else {
        return false;
    };
    let video = |t: &u8| PACED_VIDEO_TYPES.contains(t);
    types.iter().any(video)
        && types
            .iter()
            .all(|t| video(t) || PACED_OTHER_TYPES.contains(t))
}

fn is_ts(path: &Path) -> bool {
    extension(path).is_some_and(|e| e == "ts" || e == "m2ts")
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// Source settings.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub packets_per_chunk: usize,
    /// Restart backoff of the ffmpeg child.
    pub backoff: Backoff,
    /// Paced mode settings (its `packets_per_chunk` is overridden by the field above).
    pub pacer: PacerConfig,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            packets_per_chunk: DEFAULT_PACKETS_PER_CHUNK,
            backoff: Backoff::default(),
            pacer: PacerConfig::default(),
        }
    }
}

/// What ffmpeg does with the codecs of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transcode {
    /// Codecs fit MPEG-TS: `-c copy`.
    Copy,
    /// Re-encode with libx264 (and aac).
    Encode,
}

/// The ffmpeg arguments that stream `path` looped in real time as MPEG-TS on stdout.
pub fn ffmpeg_source_args(path: &Path, transcode: &Transcode) -> Vec<String> {
    let mut args: Vec<String> = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(path.to_string_lossy().into_owned());
    let codec: &[&str] = match transcode {
        Transcode::Copy => &["-c", "copy"],
        // Software x264 only (a GPU encoder is not on every host); 1 s GOP at 25 fps so that
        // viewers can join quickly; yuv420p because 4:4:4 H.264 plays almost nowhere.
        Transcode::Encode => &[
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ],
    };
    args.extend(codec.iter().map(|s| s.to_string()));
    // One audio frame per PES (as the clips are made): ffmpeg's default bundles 0.5 s of AAC
    // per PES, which an edge's ffmpeg relay child (short probe) would leave out.
    args.extend(
        ["-pes_payload_size", "0", "-f", "mpegts", "pipe:1"]
            .iter()
            .map(|s| s.to_string()),
    );
    args
}

/// Ask ffprobe whether the file's codecs can be copied into MPEG-TS.
pub async fn probe(path: &Path) -> Result<Transcode, SourceError> {
    let out = child::command(FFPROBE)
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| SourceError::Probe {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(SourceError::Probe {
            path: path.to_owned(),
            reason: msg.lines().next().unwrap_or("exit status").to_string(),
        });
    }
    // Lines come as codec_name=..., codec_type=... per stream, in that order.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut name = String::new();
    let (mut has_video, mut copyable) = (false, true);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("codec_name=") {
            name = v.trim().to_string();
        } else if let Some(t) = line.strip_prefix("codec_type=") {
            match t.trim() {
                "video" => {
                    has_video = true;
                    copyable &= TS_VIDEO_CODECS.contains(&name.as_str());
                }
                "audio" => copyable &= TS_AUDIO_CODECS.contains(&name.as_str()),
                // Subtitles and data are not selected by ffmpeg's defaults for mpegts.
                _ => {}
            }
        }
    }
    if !has_video {
        return Err(SourceError::NoVideo(path.to_owned()));
    }
    Ok(if copyable {
        Transcode::Copy
    } else {
        Transcode::Encode
    })
}

/// Counters shared with the source task.
#[derive(Debug, Default)]
struct Counters {
    chunks: AtomicU64,
    bytes: AtomicU64,
    restarts: AtomicU64,
    dropped_bytes: AtomicU64,
    child_pid: AtomicU32,
}

/// A snapshot of a source's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub chunks: u64,
    pub bytes: u64,
    /// ffmpeg children started after the first one.
    pub restarts: u64,
    /// Bytes skipped while resynchronising on the TS sync byte.
    pub dropped_bytes: u64,
}

/// A running source; dropping it stops the task and kills its child.
#[derive(Debug)]
pub struct SourceHandle {
    path: PathBuf,
    mode: SourceMode,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), SourceError>>>,
    counters: Arc<Counters>,
}

/// Entry point for starting sources.
pub struct Source;

impl Source {
    /// Start streaming `path` into `chunk_tx` with default settings.
    pub async fn start(
        path: impl Into<PathBuf>,
        mode: SourceMode,
        chunk_tx: mpsc::Sender<Chunk>,
    ) -> Result<SourceHandle, SourceError> {
        Source::start_with(path, mode, SourceConfig::default(), chunk_tx).await
    }

    /// Start streaming. Checks the file first (readable; probed in ffmpeg mode, `.ts` in paced
    /// mode), so an unplayable file is an error here rather than a silent dead stream.
    pub async fn start_with(
        path: impl Into<PathBuf>,
        mode: SourceMode,
        cfg: SourceConfig,
        chunk_tx: mpsc::Sender<Chunk>,
    ) -> Result<SourceHandle, SourceError> {
        let path = path.into();
        tokio::fs::metadata(&path)
            .await
            .map_err(|source| SourceError::Io {
                path: path.clone(),
                source,
            })?;
        // Validate the chunk size before anything runs.
        Chunker::new(cfg.packets_per_chunk)?;
        let cancel = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let task = match mode {
            SourceMode::Ffmpeg => {
                let transcode = probe(&path).await?;
                tracing::info!(path = %path.display(), ?transcode, "starting ffmpeg source");
                tokio::spawn(run_ffmpeg(
                    path.clone(),
                    transcode,
                    cfg,
                    chunk_tx,
                    cancel.clone(),
                    counters.clone(),
                ))
            }
            SourceMode::Paced => {
                if !is_ts(&path) {
                    return Err(SourceError::NotTs(path));
                }
                tracing::info!(path = %path.display(), "starting paced source");
                tokio::spawn(run_paced(
                    path.clone(),
                    cfg,
                    chunk_tx,
                    cancel.clone(),
                    counters.clone(),
                ))
            }
        };
        Ok(SourceHandle {
            path,
            mode,
            cancel,
            task: Some(task),
            counters,
        })
    }
}

impl SourceHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mode(&self) -> SourceMode {
        self.mode
    }

    pub fn stats(&self) -> SourceStats {
        let c = &self.counters;
        SourceStats {
            chunks: c.chunks.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            dropped_bytes: c.dropped_bytes.load(Ordering::Relaxed),
        }
    }

    /// Process id of the current ffmpeg child, if one is running.
    pub fn child_pid(&self) -> Option<u32> {
        match self.counters.child_pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Whether the source has ended (its channel closed, or a fatal error).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().map_or(true, |t| t.is_finished())
    }

    /// Stop the source, kill its child and wait for both; returns the task's error, if it
    /// ended with one.
    pub async fn stop(mut self) -> Result<(), SourceError> {
        self.cancel.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        // Aborting drops the task's Child, and kill_on_drop kills it.
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Send a chunk, counting it; false when the receiver is gone.
async fn deliver(tx: &mpsc::Sender<Chunk>, counters: &Counters, chunk: Chunk) -> bool {
    let len = chunk.payload.len() as u64;
    if tx.send(chunk).await.is_err() {
        return false;
    }
    counters.chunks.fetch_add(1, Ordering::Relaxed);
    counters.bytes.fetch_add(len, Ordering::Relaxed);
    true
}

async fn run_ffmpeg(
    path: PathBuf,
    transcode: Transcode,
    cfg: SourceConfig,
    tx: mpsc::Sender<Chunk>,
    cancel: CancellationToken,
    counters: Arc<Counters>,
) -> Result<(), SourceError> {
    let child = FfmpegChild {
        args: ffmpeg_source_args(&path, &transcode),
        video: VideoPipe::Stdout,
        label: format!("ffmpeg source {}", path.display()),
    };
    let mut job = FfmpegSource {
        chunker: Chunker::new(cfg.packets_per_chunk)?,
        path,
        buf: vec![0u8; 64 * 1024],
        tx,
        cancel,
        counters: counters.clone(),
    };
    let mut backoff = cfg.backoff.clone();
    let (restarts, child_pid) = (&counters.restarts, &counters.child_pid);
    child::supervise(&child, &mut job, &mut backoff, restarts, child_pid).await;
    Ok(())
}

/// The ffmpeg child of a source: its stdout is cut into chunks.
struct FfmpegSource {
    path: PathBuf,
    chunker: Chunker,
    buf: Vec<u8>,
    tx: mpsc::Sender<Chunk>,
    cancel: CancellationToken,
    counters: Arc<Counters>,
}

impl Supervised for FfmpegSource {
    fn spawn_failed(&self, e: std::io::Error) {
        tracing::error!(path = %self.path.display(), "cannot start ffmpeg: {e}");
    }

    async fn run(&mut self, ch: &mut Child, started: Instant) -> Ended {
        let (tx, counters, cancel) = (&self.tx, &self.counters, &self.cancel);
        let mut stdout = ch.stdout.take().expect("stdout was piped");
        self.chunker.reset();
        // Read until EOF (the child died), a stop, or a closed channel.
        let outcome = loop {
            let n = tokio::select! {
                _ = cancel.cancelled() => break Ended::Stop,
                r = stdout.read(&mut self.buf) => r,
            };
            match n {
                Ok(0) | Err(_) => break Ended::Died,
                Ok(n) => self.chunker.push(&self.buf[..n]),
            }
            counters
                .dropped_bytes
                .store(self.chunker.dropped_bytes(), Ordering::Relaxed);
            let mut closed = false;
            while let Some(c) = self.chunker.poll_chunk() {
                // A stop while blocked on a full channel must not wait for space.
                let sent = tokio::select! {
                    _ = cancel.cancelled() => None,
                    ok = deliver(tx, counters, c) => Some(ok),
                };
                match sent {
                    None => break,
                    Some(false) => {
                        closed = true;
                        break;
                    }
                    Some(true) => {}
                }
            }
            if closed {
                break Ended::Stop;
            }
            if cancel.is_cancelled() {
                break Ended::Stop;
            }
        };
        match outcome {
            Ended::Stop => child::kill(ch).await,
            Ended::Died => {
                let status = ch.wait().await;
                tracing::warn!(
                    path = %self.path.display(),
                    "ffmpeg source exited ({}) after {:.1}s",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        outcome
    }

    async fn pause(&mut self, delay: Duration) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        tracing::info!(path = %self.path.display(), "restarting ffmpeg source in {delay:?}");
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

async fn run_paced(
    path: PathBuf,
    cfg: SourceConfig,
    tx: mpsc::Sender<Chunk>,
    cancel: CancellationToken,
    counters: Arc<Counters>,
) -> Result<(), SourceError> {
    let io_err = |source| SourceError::Io {
        path: path.clone(),
        source,
    };
    let pacer_cfg = PacerConfig {
        packets_per_chunk: cfg.packets_per_chunk,
        ..cfg.pacer.clone()
    };
    let mut pacer = Pacer::new(pacer_cfg, Instant::now()).map_err(|source| SourceError::Pacer {
        path: path.clone(),
        source,
    })?;
    let mut file = tokio::fs::File::open(&path).await.map_err(io_err)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        match pacer.poll(now) {
            PacerPoll::Chunk(c) => {
                let sent = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    ok = deliver(&tx, &counters, c.chunk) => ok,
                };
                if !sent {
                    return Ok(());
                }
            }
            PacerPoll::WaitUntil(t) => {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep_until(t.into()) => {}
                }
            }
            PacerPoll::NeedInput => {
                let n = file.read(&mut buf).await.map_err(io_err)?;
                if n == 0 {
                    pacer.end_of_file().map_err(|source| SourceError::Pacer {
                        path: path.clone(),
                        source,
                    })?;
                    file.rewind().await.map_err(io_err)?;
                } else {
                    pacer.push(&buf[..n]);
                    counters
                        .dropped_bytes
                        .store(pacer.stats().dropped_bytes, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A playable video file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    /// The file name without its extension; the name clients ask for.
    pub name: String,
    pub path: PathBuf,
}

/// What changed in the folder since the last scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibraryChanges {
    pub added: Vec<Video>,
    pub removed: Vec<Video>,
}

impl LibraryChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The playable files of one folder, re-read on demand ([`scan`](VideoLibrary::scan), called
/// by the server on a timer: polling works on every file system and needs no extra crate).
///
/// Hidden files (a leading dot, as in editors' and `bin/make-videos`' temporary files) are
/// ignored. A file that appears after the first scan is offered only once its size and
/// modification time are the same in two scans in a row, so a file still being copied in is
/// not streamed half-written. Two files with the same name and different extensions: the
/// first in path order wins.
#[derive(Debug)]
pub struct VideoLibrary {
    dir: PathBuf,
    videos: BTreeMap<String, Video>,
    /// New files seen once, with (size, mtime), waiting to be seen unchanged.
    settling: BTreeMap<PathBuf, (u64, Option<SystemTime>)>,
    scanned: bool,
}

impl VideoLibrary {
    pub fn new(dir: impl Into<PathBuf>) -> VideoLibrary {
        VideoLibrary {
            dir: dir.into(),
            videos: BTreeMap::new(),
            settling: BTreeMap::new(),
            scanned: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The videos known after the last scan, by name.
    pub fn videos(&self) -> impl Iterator<Item = &Video> {
        self.videos.values()
    }

    pub fn get(&self, name: &str) -> Option<&Video> {
        self.videos.get(name)
    }

    /// Re-read the folder (blocking file system calls on a small folder).
    pub fn scan(&mut self) -> std::io::Result<LibraryChanges> {
        let mut entries: Vec<(PathBuf, u64, Option<SystemTime>)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            let playable =
                extension(&path).is_some_and(|e| PLAYABLE_EXTENSIONS.contains(&e.as_str()));
            if hidden || !playable {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_file() && meta.len() > 0 {
                entries.push((path, meta.len(), meta.modified().ok()));
            }
        }
        entries.sort();
        let mut changes = LibraryChanges::default();
        let mut present: BTreeMap<String, Video> = BTreeMap::new();
        let mut settling = BTreeMap::new();
        for (path, size, mtime) in entries {
            let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            if present.contains_key(&name) {
                continue;
            }
            let known = self.videos.get(&name).is_some_and(|v| v.path == path);
            let settled = !self.scanned || self.settling.get(&path) == Some(&(size, mtime));
            if known || settled {
                let video = Video {
                    name: name.clone(),
                    path,
                };
                if !known {
                    changes.added.push(video.clone());
                }
                present.insert(name, video);
            } else {
                settling.insert(path, (size, mtime));
            }
        }
        for (name, video) in &self.videos {
            if present.get(name) != Some(video) {
                changes.removed.push(video.clone());
            }
        }
        self.videos = present;
        self.settling = settling;
        self.scanned = true;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_args_copy_and_encode() {
        let copy = ffmpeg_source_args(Path::new("/v/a b.ts"), &Transcode::Copy).join(" ");
        assert_eq!(
            copy,
            "-hide_banner -loglevel error -nostdin -re -stream_loop -1 -i /v/a b.ts -c copy -pes_payload_size 0 -f mpegts pipe:1"
        );
        let enc = ffmpeg_source_args(Path::new("x.mkv"), &Transcode::Encode).join(" ");
        assert!(enc.contains("-c:v libx264 -preset veryfast -tune zerolatency -g 25"));
        assert!(!enc.contains("nvenc"));
    }

    #[test]
    fn only_plain_mpeg_ts_plays_as_is() {
        let dir = std::env::temp_dir().join(format!("overlayd-sniff-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let alpha = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("videos")
                .join("alpha.ts"),
        )
        .unwrap();
        let write = |name: &str, data: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap();
            p
        };
        let ts = write("a.ts", &alpha);
        assert!(plays_as_is(&ts));
        assert_eq!(SourceMode::auto(&ts), Some(SourceMode::Paced));
        // Same bytes, not a .ts name; 192-byte packets (BDAV); garbage; an audio codec that
        // ffmpeg would transcode (AAC in LATM, stream type 0x11).
        assert!(!plays_as_is(&write("a.mp4", &alpha)));
        let bdav: Vec<u8> = alpha
            .chunks(188)
            .flat_map(|p| [&[0u8; 4][..], p].concat())
            .collect();
        assert!(!plays_as_is(&write("b.m2ts", &bdav)));
        assert!(!plays_as_is(&write("g.ts", &[0x47; 5000])));
        let mut latm = alpha.clone();
        let mut patched = 0;
        for pkt in latm.chunks_mut(188) {
            let pid = (u16::from(pkt[1] & 0x1F) << 8) | u16::from(pkt[2]);
            if pid == 0x1000 {
                if let Some(i) = pkt.windows(3).position(|w| w == [0x0F, 0xE1, 0x01]) {
                    pkt[i] = 0x11;
                    patched += 1;
                }
            }
        }
        assert!(patched > 0);
        assert!(!plays_as_is(&write("l.ts", &latm)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn library_lists_and_notices_changes() {
        let dir = std::env::temp_dir().join(format!("overlayd-lib-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.ts"), b"x").unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.join(".tmp.ts"), b"x").unwrap();
        std::fs::write(dir.join("empty.ts"), b"").unwrap();
        let mut lib = VideoLibrary::new(&dir);
        let c = lib.scan().unwrap();
        let names: Vec<_> = c.added.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, vec!["a"]);
        // A new file is offered once it is unchanged across two scans.
        std::fs::write(dir.join("b.mp4"), b"xy").unwrap();
        assert!(lib.scan().unwrap().is_empty());
        let c = lib.scan().unwrap();
        assert_eq!(c.added.len(), 1);
        assert_eq!(c.added[0].name, "b");
        assert!(lib.get("b").is_some());
        std::fs::remove_file(dir.join("a.ts")).unwrap();
        let c = lib.scan().unwrap();
        assert_eq!(c.removed.len(), 1);
        assert_eq!(lib.videos().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(lib.scan().is_err());
    }
}
