//! The thesis's real streaming service (§5.1): nginx with the RTMP module serving a 720p test
//! video on demand, run and live-migrated by the CRIU or the LXC service module like any other
//! service.
//!
//! * **The test video** ([`TEST_VIDEO`]): made once per machine with ffmpeg from the `testsrc`
//!   pattern — 1280x720 at 25 fps, 120 s, H.264 (x264 `ultrafast`, a keyframe every 2 s, ≤ 2 Mbit/s)
//!   and a 440 Hz AAC sine tone, in FLV (≈ 22 MB, ≈ 25 s to encode on the 2-core VM) — at
//!   [`MEDIA_DIR`]`/`[`MEDIA_FILE`], outside `/run` and `/tmp` so it survives the testbed, and
//!   outside `/var` so an LXC container can bind it (its `/var` is a private tmpfs).
//!   [`ensure_media`] makes it when missing (temp file + rename, so a half-made video is never
//!   served); `testbed up` calls it when a planned service is `nginx-rtmp`.
//! * **The server**: one nginx per service with its own config under the testbed's state dir
//!   (`<state dir>/rtmp-<id>/nginx.conf`; the edge clouds share the host's filesystem, so both
//!   sides of a migration see the same path). `daemon off`, one master (PID 1 of the service's PID
//!   namespace) and one worker, both as root (CRIU cannot restore a task of another uid here);
//!   `rtmp { server { listen 1935; application vod { play MEDIA_DIR; } } }` and nothing else
//!   listening. Play it at `rtmp://<service IP>/vod/testsrc-720p.flv` ([`play_url`]).
//! * **In an LXC container** ([`lxc_service_command`]) the host's state dir is out of reach (the
//!   container binds the host's directories read-only and keeps `/run`, `/var` and `/tmp`
//!   private), so the container's init is a shell that writes the same config into the
//!   container's own `/tmp` ([`LXC_SERVICE_DIR`]) and execs nginx; the config, pid and logs then
//!   live in that tmpfs, which CRIU carries in the container's images. The shell names the video
//!   by its absolute path, so the LXC backend binds [`MEDIA_DIR`] read-only (the same path at
//!   every edge).
//! * **What CRIU must find at restore**: every file the tree holds open must exist with the size
//!   it had at the dump. nginx holds its error log (fd 2 and one more; `-e` sets it before the
//!   config is read, so the compiled-in `/var/log/nginx/error.log` is never opened), its RTMP
//!   access log, and, while a client plays, the video. All three live on the host's filesystem
//!   and nothing writes them while the service is frozen. Verified by hand with criu 4.2.1 on
//!   2026-11-30: master + worker with a playing ffmpeg client dumped (≈ 2.4 MB of images) and
//!   restored, and the client played on.
//! * **Pacing**: nginx-rtmp paces VOD by itself: it sends the client's buffer length (the RTMP
//!   `SetBufferLength` the player announces; ffmpeg's `-rtmp_buffer`) plus ≈ 1.5 s ahead at once,
//!   then 1x (measured: 25 frames per second of wall clock after the first burst). The player
//!   needs no `-re` (see [`crate::player`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the test video lives (kept across testbeds; not under `/run` or `/tmp`).
pub const MEDIA_DIR: &str = "/opt/testbed/media";
/// Where nginx keeps its config, pid and logs in an LXC container (its private tmpfs).
pub const LXC_SERVICE_DIR: &str = "/tmp";
/// The test video's file name.
pub const MEDIA_FILE: &str = "testsrc-720p.flv";
/// The RTMP port nginx listens on.
pub const RTMP_PORT: u16 = 1935;
/// The nginx-rtmp application that serves the media directory.
pub const APPLICATION: &str = "vod";
/// The nginx binary (Debian's `nginx-light`).
pub const NGINX: &str = "/usr/sbin/nginx";
/// The shell an LXC container's init runs first (under `/usr`, which every container binds).
pub const SHELL: &str = "/usr/bin/sh";
/// The RTMP module (Debian's `libnginx-mod-rtmp`).
pub const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// The parameters of a test video made from ffmpeg's `testsrc` pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestVideo {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Length in seconds.
    pub seconds: u32,
    /// Frames between keyframes.
    pub keyframe_every: u32,
    /// Video bitrate cap, kbit/s.
    pub video_kbps: u32,
    /// Audio bitrate, kbit/s (AAC, stereo 44.1 kHz sine tone).
    pub audio_kbps: u32,
}

/// The thesis's 720p video (§5.1), as the testbed makes it.
pub const TEST_VIDEO: TestVideo = TestVideo {
    width: 1280,
    height: 720,
    fps: 25,
    seconds: 120,
    keyframe_every: 50,
    video_kbps: 2000,
    audio_kbps: 128,
};

/// Why the test video or a server config could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RtmpError {
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run ffmpeg (install it: scripts/setup)")]
    NoFfmpeg(#[source] std::io::Error),
    #[error("ffmpeg could not encode the test video ({status}): {stderr}")]
    Encode { status: String, stderr: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RtmpError {
    let path = path.to_path_buf();
    move |source| RtmpError::Io { path, source }
}

/// The test video's path.
pub fn media_path() -> PathBuf {
    Path::new(MEDIA_DIR).join(MEDIA_FILE)
}

/// The URL that plays the test video from the nginx-rtmp service at `ip`.
pub fn play_url(ip: Ipv4Addr) -> String {
    format!("rtmp://{ip}:{RTMP_PORT}/{APPLICATION}/{MEDIA_FILE}")
}

/// The ffmpeg arguments that encode `v` into the FLV file `out` (fast: x264 `ultrafast`, a fixed
/// GOP without scene-cut keyframes, so seeking and joining cost at most one GOP).
pub fn encode_args(v: &TestVideo, out: &Path) -> Vec<String> {
    let TestVideo {
        width,
        height,
        fps,
        seconds,
        keyframe_every,
        video_kbps,
        audio_kbps,
    } = *v;
    [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc=size={width}x{height}:rate={fps}"),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        &seconds.to_string(),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        &keyframe_every.to_string(),
        "-keyint_min",
        &keyframe_every.to_string(),
        "-sc_threshold",
        "0",
        "-b:v",
        &format!("{video_kbps}k"),
        "-maxrate",
        &format!("{video_kbps}k"),
        "-bufsize",
        &format!("{}k", 2 * video_kbps),
        "-c:a",
        "aac",
        "-b:a",
        &format!("{audio_kbps}k"),
        "-ac",
        "2",
        "-f",
        "flv",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(std::iter::once(out.display().to_string()))
    .collect()
}

/// What [`ensure_media`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// The video was there already.
    Present,
    /// It was encoded now.
    Made { took: Duration, bytes: u64 },
}

/// Makes the test video at `dir/`[`MEDIA_FILE`] unless it exists (non-empty). `encoding` is
/// called once before a (slow, ≈ 25 s) encode starts, with the path it will make. The video is
/// written to a temp file in `dir` and renamed into place, so a failed or concurrent encode never
/// leaves a partial file under the final name.
pub fn ensure_media_in(
    dir: &Path,
    v: &TestVideo,
    encoding: impl FnOnce(&Path),
) -> Result<Media, RtmpError> {
    let path = dir.join(MEDIA_FILE);
    if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() > 0) {
        return Ok(Media::Present);
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Unique per call, also between threads of one process.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{MEDIA_FILE}.{}.{call}.tmp", std::process::id()));
    encoding(&path);
    let start = Instant::now();
    let out = Command::new("ffmpeg")
        .args(encode_args(v, &tmp))
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(RtmpError::NoFfmpeg(e));
        }
    };
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(RtmpError::Encode {
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let bytes = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(RtmpError::Io { path, source: e });
    }
    Ok(Media::Made {
        took: start.elapsed(),
        bytes,
    })
}

/// [`ensure_media_in`] for the testbed's video ([`MEDIA_DIR`], [`TEST_VIDEO`]).
pub fn ensure_media(encoding: impl FnOnce(&Path)) -> Result<Media, RtmpError> {
    ensure_media_in(Path::new(MEDIA_DIR), &TEST_VIDEO, encoding)
}

/// The directory of service `service_id`'s nginx (config, logs, pid file) in a testbed whose
/// state lives in `state_dir`.
pub fn service_dir(state_dir: &Path, service_id: &str) -> PathBuf {
    state_dir.join(format!("rtmp-{service_id}"))
}

/// Service `service_id`'s nginx config.
pub fn config_path(state_dir: &Path, service_id: &str) -> PathBuf {
    service_dir(state_dir, service_id).join("nginx.conf")
}

/// Service `service_id`'s nginx error log (also its stderr).
pub fn error_log_path(state_dir: &Path, service_id: &str) -> PathBuf {
    service_dir(state_dir, service_id).join("error.log")
}

/// The nginx config of a service whose files live in `dir`, serving `media_dir`.
pub fn config_text(dir: &Path, media_dir: &Path) -> String {
    let d = dir.display();
    format!(
        "# testbed: nginx-rtmp service (see testbed/src/rtmp.rs); made by `testbed up`\n\
         load_module {RTMP_MODULE};\n\
         daemon off;\n\
         master_process on;\n\
         worker_processes 1;\n\
         # as root: CRIU here cannot restore a task of another uid\n\
         user root root;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{\n    worker_connections 256;\n}}\n\
         rtmp {{\n    access_log {d}/access.log;\n    server {{\n        listen {RTMP_PORT};\n        \
         application {APPLICATION} {{\n            play {media};\n        }}\n    }}\n}}\n",
        media = media_dir.display()
    )
}

/// The command the CRIU backend runs for the service whose config is `conf` (next to its
/// `error.log`): nginx in the foreground (`daemon off` in the config).
pub fn service_command(conf: &Path) -> Vec<String> {
    let error_log = conf.with_file_name("error.log");
    vec![
        NGINX.to_owned(),
        "-e".to_owned(),
        error_log.display().to_string(),
        "-c".to_owned(),
        conf.display().to_string(),
    ]
}

/// The command the LXC and LXD backends run as the container's init: a shell that checks the video is
/// there, writes [`config_text`] for [`LXC_SERVICE_DIR`] into that directory and execs
/// [`service_command`] on it.
pub fn lxc_service_command(media_dir: &Path) -> Vec<String> {
    let dir = Path::new(LXC_SERVICE_DIR);
    let conf = dir.join("nginx.conf");
    let video = media_dir.join(MEDIA_FILE);
    let script = format!(
        "test -r {video} || {{ echo 'no test video {video}' >&2; exit 1; }}\n\
         cat > {conf} <<'EOF'\n{text}EOF\n\
         exec {nginx}\n",
        video = video.display(),
        conf = conf.display(),
        text = config_text(dir, media_dir),
        nginx = service_command(&conf).join(" "),
    );
    vec![SHELL.to_owned(), "-c".to_owned(), script]
}

/// Writes service `service_id`'s nginx config under `state_dir` (serving `media_dir`) and creates
/// its log files, so they exist before nginx opens them. Returns the config's path.
pub fn write_config(
    state_dir: &Path,
    service_id: &str,
    media_dir: &Path,
) -> Result<PathBuf, RtmpError> {
    let dir = service_dir(state_dir, service_id);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let conf = config_path(state_dir, service_id);
    std::fs::write(&conf, config_text(&dir, media_dir)).map_err(io(&conf))?;
    for log in ["error.log", "access.log"] {
        let p = dir.join(log);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io(&p))?;
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_serves_the_media_dir_on_1935_only_in_the_foreground_as_root() {
        let text = config_text(Path::new("/run/testbed/t/rtmp-nginx"), Path::new(MEDIA_DIR));
        for want in [
            "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;",
            "daemon off;",
            "user root root;",
            "pid /run/testbed/t/rtmp-nginx/nginx.pid;",
            "error_log /run/testbed/t/rtmp-nginx/error.log info;",
            "access_log /run/testbed/t/rtmp-nginx/access.log;",
            "listen 1935;",
            "application vod {",
            "play /opt/testbed/media;",
        ] {
            assert!(text.contains(want), "missing `{want}` in\n{text}");
        }
        assert_eq!(text.matches("listen").count(), 1, "{text}");
        assert!(!text.contains("http"), "nothing but RTMP: {text}");
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn an_lxc_container_writes_the_config_into_its_own_tmp_and_execs_nginx() {
        let cmd = lxc_service_command(Path::new(MEDIA_DIR));
        assert_eq!(cmd[..2], [SHELL, "-c"]);
        assert_eq!(cmd.len(), 3);
        let script = &cmd[2];
        assert!(script
            .starts_with("test -r /opt/testbed/media/testsrc-720p.flv || { echo 'no test video"));
        // The config, as the CRIU backend's but for /tmp, between the here-document's quotes.
        let conf = config_text(Path::new("/tmp"), Path::new(MEDIA_DIR));
        assert!(script.contains(&format!("cat > /tmp/nginx.conf <<'EOF'\n{conf}EOF\n")));
        assert!(conf.contains("pid /tmp/nginx.pid;") && conf.contains("error_log /tmp/error.log"));
        assert!(script.ends_with("exec /usr/sbin/nginx -e /tmp/error.log -c /tmp/nginx.conf\n"));
        // The video is named by its absolute path: the LXC backend binds its directory.
        assert!(script
            .split_whitespace()
            .any(|w| w == "/opt/testbed/media/testsrc-720p.flv"));
    }

    #[test]
    fn the_command_runs_nginx_with_its_config_and_log() {
        let conf = config_path(Path::new("/run/testbed/t"), "nginx");
        assert_eq!(
            service_command(&conf),
            [
                "/usr/sbin/nginx",
                "-e",
                "/run/testbed/t/rtmp-nginx/error.log",
                "-c",
                "/run/testbed/t/rtmp-nginx/nginx.conf"
            ]
        );
        assert_eq!(
            error_log_path(Path::new("/run/testbed/t"), "nginx"),
            PathBuf::from("/run/testbed/t/rtmp-nginx/error.log")
        );
        assert_eq!(
            play_url(Ipv4Addr::new(20, 0, 0, 100)),
            "rtmp://20.0.0.100:1935/vod/testsrc-720p.flv"
        );
    }

    #[test]
    fn the_test_video_is_720p_h264_with_a_keyframe_every_two_seconds() {
        let args = encode_args(&TEST_VIDEO, Path::new("/x/out.flv"));
        let joined = args.join(" ");
        for want in [
            "testsrc=size=1280x720:rate=25",
            "-t 120",
            "-c:v libx264 -preset ultrafast",
            "-g 50 -keyint_min 50 -sc_threshold 0",
            "-c:a aac",
            "-f flv /x/out.flv",
        ] {
            assert!(joined.contains(want), "missing `{want}` in {joined}");
        }
        assert_eq!(args.last().map(String::as_str), Some("/x/out.flv"));
        let v = TEST_VIDEO;
        let gop_s = f64::from(v.keyframe_every) / f64::from(v.fps);
        assert!((1.0..=2.0).contains(&gop_s));
    }

    #[test]
    fn config_files_are_written_and_logs_exist_before_nginx_starts() {
        let root = std::env::temp_dir().join(format!("tb-rtmp-conf-{}", std::process::id()));
        let conf = write_config(&root, "nginx", Path::new("/m")).expect("written");
        assert_eq!(conf, root.join("rtmp-nginx/nginx.conf"));
        let text = std::fs::read_to_string(&conf).expect("config");
        assert!(text.contains("play /m;"));
        assert!(root.join("rtmp-nginx/error.log").is_file());
        assert!(root.join("rtmp-nginx/access.log").is_file());
        // Again: logs are kept (a restore needs them at their size), the config rewritten.
        std::fs::write(root.join("rtmp-nginx/error.log"), b"old").expect("log");
        write_config(&root, "nginx", Path::new("/m")).expect("rewritten");
        assert_eq!(
            std::fs::read(root.join("rtmp-nginx/error.log")).expect("log"),
            b"old"
        );
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn an_existing_video_is_not_encoded_again() {
        let dir = std::env::temp_dir().join(format!("tb-rtmp-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(MEDIA_FILE), b"FLV").expect("video");
        let mut called = false;
        let got = ensure_media_in(&dir, &TEST_VIDEO, |_| called = true).expect("present");
        assert_eq!(got, Media::Present);
        assert!(!called);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_missing_video_is_encoded_by_ffmpeg_and_renamed_into_place() {
        if Command::new("ffmpeg").arg("-version").output().is_err() {
            eprintln!("skipped: no ffmpeg (scripts/setup installs it)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("tb-rtmp-enc-{}", std::process::id()));
        let tiny = TestVideo {
            width: 160,
            height: 90,
            seconds: 1,
            ..TEST_VIDEO
        };
        let mut announced = None;
        let got =
            ensure_media_in(&dir, &tiny, |p| announced = Some(p.to_path_buf())).expect("encoded");
        assert!(
            matches!(got, Media::Made { bytes, .. } if bytes > 0),
            "{got:?}"
        );
        assert_eq!(announced, Some(dir.join(MEDIA_FILE)));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [MEDIA_FILE], "no temp file left");
        let head = std::fs::read(dir.join(MEDIA_FILE)).expect("video");
        assert_eq!(&head[..3], b"FLV");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn nginx_accepts_the_config_with_the_real_rtmp_module() {
        if !Path::new(NGINX).exists() || !Path::new(RTMP_MODULE).exists() {
            eprintln!("skipped: no {NGINX} or {RTMP_MODULE} (scripts/setup installs them)");
            return;
        }
        let root = std::env::temp_dir().join(format!("tb-rtmp-nginx-t-{}", std::process::id()));
        let conf = write_config(&root, "nginx", Path::new(MEDIA_DIR)).expect("written");
        let mut cmd = service_command(&conf);
        cmd.insert(1, "-t".into());
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .output()
            .expect("nginx -t");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert!(out.status.success(), "nginx -t: {text}");
        assert!(text.contains("test is successful"), "{text}");
    }
}
