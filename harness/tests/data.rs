//! The data manifest against the shared data, and `fetch` against a local HTTP server that
//! mirrors the upstream URLs (tests never reach the internet).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dtm_harness::data::{self, DataError, Source};

fn shared_data() -> PathBuf {
    common::shared().join("data")
}

/// A minimal HTTP/1.1 file server on 127.0.0.1 serving `root` (GET only, one connection at a
/// time, `Connection: close`). Returns its base URL and a count of the requests served.
fn serve(root: PathBuf) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            answer(stream, &root);
        }
    });
    (base, served)
}

fn answer(mut stream: TcpStream, root: &Path) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let file = root.join(path.trim_start_matches('/'));
    let (status, body) = match std::fs::read(&file) {
        Ok(b) if !path.contains("..") => ("200 OK", b),
        _ => ("404 Not Found", b"not found".to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

/// Where a mirror at `root` keeps `url`: `https://host/path` → `root/host/path`.
fn mirror_path(root: &Path, url: &str) -> PathBuf {
    root.join(url.split_once("://").unwrap().1)
}

/// A mirror of the upstream sources of `groups`, built from the shared data: files at their URL
/// paths, the MMLU archive as a zip of its members.
fn build_mirror(groups: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let mut zips: std::collections::BTreeMap<String, Vec<(String, PathBuf)>> = Default::default();
    for e in data::manifest()
        .into_iter()
        .filter(|e| groups.contains(&e.group()))
    {
        match &e.source {
            Source::Url(url) => {
                let to = mirror_path(root.path(), url);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(shared_data().join(&e.path), to).unwrap();
            }
            Source::ZipMember { url, member } => zips
                .entry(url.clone())
                .or_default()
                .push((member.clone(), shared_data().join(&e.path))),
            Source::Embedded(_) => {}
        }
    }
    for (url, members) in zips {
        let to = mirror_path(root.path(), &url);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&to).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (member, file) in members {
            // As in the upstream archive, the members sit under a top folder.
            zip.start_file(format!("mmlu/{member}"), options).unwrap();
            let mut bytes = Vec::new();
            std::fs::File::open(&file)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            zip.write_all(&bytes).unwrap();
        }
        zip.finish().unwrap();
    }
    root
}

fn only(groups: &[&str]) -> Vec<String> {
    groups.iter().map(|g| g.to_string()).collect()
}

#[test]
fn fetch_downloads_checks_and_installs_every_file() {
    let groups = ["gsm8k", "humaneval", "mmlu", "truthfulqa"];
    let mirror = build_mirror(&groups);
    let (base, served) = serve(mirror.path().to_owned());
    let dest = tempfile::tempdir().unwrap();
    let mut heard = Vec::new();
    let fetched = data::fetch(dest.path(), &only(&groups), Some(&base), &mut |p| {
        heard.push(p.to_owned())
    })
    .unwrap();
    let expected = data::manifest()
        .iter()
        .filter(|e| groups.contains(&e.group()))
        .count();
    assert_eq!((fetched.written, fetched.present), (expected, 0));
    assert_eq!(heard.len(), expected);
    // The embedded exemplar files were written without a request; MMLU's archive was fetched
    // once for its 114 members.
    let urls = data::manifest()
        .iter()
        .filter(|e| groups.contains(&e.group()) && matches!(e.source, Source::Url(_)))
        .count();
    assert_eq!(served.load(Ordering::SeqCst), urls + 1);
    let check = data::verify(dest.path(), &only(&groups)).unwrap();
    assert!(check.is_ok() && check.ok == expected, "{check:?}");

    // A second fetch finds everything in place and asks for nothing.
    let again = data::fetch(dest.path(), &only(&groups), Some(&base), &mut |_| {}).unwrap();
    assert_eq!((again.written, again.present), (0, expected));
    assert_eq!(served.load(Ordering::SeqCst), urls + 1);
}

#[test]
fn fetch_refuses_content_whose_hash_differs_and_names_what_is_missing_upstream() {
    let mirror = build_mirror(&["humaneval", "arc"]);
    let he = data::manifest()
        .into_iter()
        .find(|e| e.group() == "humaneval")
        .unwrap();
    let Source::Url(url) = &he.source else {
        panic!()
    };
    std::fs::write(mirror_path(mirror.path(), url), b"tampered").unwrap();
    let arc = data::manifest()
        .into_iter()
        .find(|e| e.group() == "arc")
        .unwrap();
    let Source::Url(arc_url) = &arc.source else {
        panic!()
    };
    std::fs::remove_file(mirror_path(mirror.path(), arc_url)).unwrap();
    let (base, _) = serve(mirror.path().to_owned());
    let dest = tempfile::tempdir().unwrap();
    let err = data::fetch(
        dest.path(),
        &only(&["humaneval", "arc"]),
        Some(&base),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, DataError::Fetch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{}: downloaded content has sha256", he.path))
            && msg.contains(&he.sha256),
        "{msg}"
    );
    assert!(msg.contains("404"), "{msg}");
    assert!(
        !dest.path().join(&he.path).exists(),
        "nothing unchecked is installed"
    );
    assert!(!dest.path().join(&arc.path).exists());
}

#[test]
fn the_shared_data_matches_the_manifest() {
    let check = data::verify(&shared_data(), &[]).unwrap();
    assert!(check.is_ok(), "{check:?}");
    assert_eq!(check.ok, data::manifest().len());
    // Through the command line too.
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["data", "verify", "--dir"])
        .arg(shared_data())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{} files match the manifest, 0 missing, 0 differ",
            data::manifest().len()
        )),
        "{stdout}"
    );
}

#[test]
fn verify_names_missing_and_differing_files() {
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("gsm8k/grade_school_math/data/test.jsonl");
    std::fs::create_dir_all(test.parent().unwrap()).unwrap();
    std::fs::write(&test, "{}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["data", "verify", "--only", "gsm8k", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("differs  gsm8k/grade_school_math/data/test.jsonl"),
        "{stdout}"
    );
    assert!(
        stdout.contains("missing  gsm8k/cot_exemplars.jsonl"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("harness data fetch --dir"), "{stderr}");
}

#[test]
fn a_missing_group_is_named_with_the_command_that_fetches_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = data::require_group(dir.path(), "humaneval")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("humaneval/data/HumanEval.jsonl.gz: missing")
            && err.contains(&format!(
                "harness data fetch --dir {} --only humaneval",
                dir.path().display()
            )),
        "{err}"
    );
    data::require_group(&shared_data(), "humaneval").unwrap();
}

#[test]
fn the_data_folder_is_found_without_depending_on_the_current_directory() {
    // From a folder with no ../shared/data, `harness list` still finds the data.
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir("/")
        .env_remove("DTM_DATA_DIR")
        .env("XDG_DATA_HOME", "/nonexistent-xdg")
        .env("HOME", "/nonexistent-home")
        .args(["data", "verify", "--only", "gsm8k"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // DTM_DATA_DIR, when set, is the data folder; a wrong one is an error naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .env("DTM_DATA_DIR", "/nonexistent-data")
        .args(["data", "verify"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent-data") && stderr.contains("DTM_DATA_DIR"),
        "{stderr}"
    );
}
