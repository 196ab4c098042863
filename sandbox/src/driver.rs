//! The Python driver that wraps every program, and the host side of its completion record.
//!
//! The guest is always started as `python -I -B -c DRIVER` (fixed argv). Everything that
//! varies per run arrives on stdin: one line holding a fresh random nonce, then the program
//! source. The driver reads stdin to the end (so the program itself sees an empty stdin),
//! compiles and `exec`s the program in a fresh `__main__` module, and only if that returns
//! normally writes the record `"\n" MARK nonce ":ok:" ...` straight to fd 1 and exits 0.
//! Any exception — `SystemExit` from `sys.exit(0)`/`exit()` included — is printed as a
//! traceback on stderr and reported as `":err:" type ":" message` with exit status 1.
//! `os._exit(...)` from the program skips the record altogether.
//!
//! The host counts a run as passed only when the guest exited with status 0 *and* the
//! stdout stream ends with a well-formed `ok` record carrying this run's nonce.

/// Prefix of the completion record (after a newline, before the nonce).
const MARK: &[u8] = b"\x1edtm-done:";

/// Longest exception message (in bytes of UTF-8) the driver puts into its record.
const MAX_MESSAGE: usize = 2000;

/// Python source run with `-c`. It contains no per-run data.
///
/// Notes on choices made here:
/// * The nonce lives only in a closure cell of `_dtm_finish`; it is not in any module's
///   globals, not in the source, not in argv or the environment, and stdin is drained.
/// * The program runs in a brand-new module object registered as `sys.modules["__main__"]`,
///   so `__name__ == "__main__"` blocks run and the driver's own globals are not its globals.
/// * The record goes to fd 1 with `os.write` after flushing Python's buffers, so it comes
///   after everything the program printed even if `sys.stdout` was replaced.
/// * `os._exit` ends the process without running the program's `atexit` handlers, so
///   nothing the program registered can run after the verdict. `os.write` and `os._exit`
///   are bound before the program runs, so patching the `os` module cannot change them,
///   and the `ok` record is only reachable from the `else` of the `try`.
pub(crate) const DRIVER: &str = r#"
import sys
def _dtm_main():
    import os
    _write, _exit = os.write, os._exit
    data = sys.stdin.buffer.read()
    nl = data.index(b"\n")
    head = b"\n\x1edtm-done:" + data[:nl] + b":"
    src = data[nl + 1:]
    del data, nl
    def _dtm_finish(tag, etype="", msg=""):
        for f in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                f.flush()
            except BaseException:
                pass
        rec = b"".join((head, tag, b":",
                        etype.encode("utf-8", "backslashreplace").hex().encode(), b":",
                        msg.encode("utf-8", "backslashreplace")[:__MAX__].hex().encode(), b"\n"))
        while rec:
            try:
                n = _write(1, rec)
            except InterruptedError:
                continue
            rec = rec[n:]
        _exit(0 if tag == b"ok" else 1)
    mod = type(sys)("__main__")
    sys.modules["__main__"] = mod
    try:
        code = compile(src, "<program>", "exec")
        del src
        exec(code, mod.__dict__)
    except BaseException as e:
        try:
            etype = type(e).__qualname__
        except BaseException:
            etype = "BaseException"
        try:
            msg = str(e)
        except BaseException:
            msg = "<exception str() failed>"
        try:
            import traceback
            tb = e.__traceback__
            if tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            traceback.print_exception(type(e), e, tb, file=sys.__stderr__)
        except BaseException:
            pass
        _dtm_finish(b"err", etype, msg)
    else:
        _dtm_finish(b"ok")
_dtm_main()
"#;

/// The driver source with its constants filled in.
pub(crate) fn driver_source() -> String {
    DRIVER.replace("__MAX__", &MAX_MESSAGE.to_string())
}

/// A fresh 128-bit nonce, hex-encoded.
pub(crate) fn fresh_nonce() -> String {
    let mut b = [0u8; 16];
    // getrandom only fails when the OS has no entropy source at all; fall back to a
    // time-and-address mix rather than abort (the nonce guards against accidents, it is
    // not a cryptographic key).
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let a = &b as *const _ as usize as u128;
        b = (t ^ a.rotate_left(64)).to_le_bytes();
    }
    hex::encode(b)
}

/// What the guest receives on stdin: the nonce line, then the program's bytes (which the driver
/// compiles as bytes, so a coding declaration in the program is honoured).
pub(crate) fn stdin_payload(nonce: &str, program: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(nonce.len() + 1 + program.len());
    v.extend_from_slice(nonce.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(program);
    v
}

/// The driver's verdict, decoded from the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Ok,
    Err { etype: String, message: String },
}

/// Finds this run's record at the very end of `tail` (the last bytes of stdout).
/// Returns the record and its length in bytes (so it can be stripped from the output).
pub(crate) fn parse_record(tail: &[u8], nonce: &str) -> Option<(Record, usize)> {
    let mut needle = Vec::with_capacity(1 + MARK.len() + nonce.len() + 1);
    needle.push(b'\n');
    needle.extend_from_slice(MARK);
    needle.extend_from_slice(nonce.as_bytes());
    needle.push(b':');
    let start = rfind(tail, &needle)?;
    let rec = &tail[start..];
    let body = rec[needle.len()..].strip_suffix(b"\n")?;
    let mut parts = body.split(|&c| c == b':');
    let tag = parts.next()?;
    let etype = parts.next()?;
    let msg = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let record = match tag {
        b"ok" if etype.is_empty() && msg.is_empty() => Record::Ok,
        b"err" => Record::Err {
            etype: String::from_utf8_lossy(&hex::decode(etype).ok()?).into_owned(),
            message: String::from_utf8_lossy(&hex::decode(msg).ok()?).into_owned(),
        },
        _ => return None,
    };
    Some((record, rec.len()))
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len())
        .rev()
        .find(|&i| &hay[i..i + needle.len()] == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(nonce: &str, tag: &str, etype: &str, msg: &str) -> Vec<u8> {
        format!(
            "\n\x1edtm-done:{nonce}:{tag}:{}:{}\n",
            hex::encode(etype),
            hex::encode(msg)
        )
        .into_bytes()
    }

    #[test]
    fn parses_ok_and_err() {
        let n = fresh_nonce();
        let mut out = b"hello\n".to_vec();
        let r = rec(&n, "ok", "", "");
        out.extend_from_slice(&r);
        assert_eq!(parse_record(&out, &n), Some((Record::Ok, r.len())));

        let r = rec(&n, "err", "AssertionError", "boom: x");
        assert_eq!(
            parse_record(&r, &n),
            Some((
                Record::Err {
                    etype: "AssertionError".into(),
                    message: "boom: x".into()
                },
                r.len()
            ))
        );
    }

    #[test]
    fn rejects_other_nonce_and_trailing_output() {
        let n = fresh_nonce();
        let other = fresh_nonce();
        assert_ne!(n, other);
        assert_eq!(parse_record(&rec(&other, "ok", "", ""), &n), None);
        let mut out = rec(&n, "ok", "", "");
        out.extend_from_slice(b"more");
        assert_eq!(parse_record(&out, &n), None);
        assert_eq!(parse_record(b"", &n), None);
    }

    #[test]
    fn driver_has_no_placeholders_left() {
        let s = driver_source();
        assert!(!s.contains("__MAX__"));
        assert!(s.contains("\\x1edtm-done:"));
        assert_eq!(MARK, b"\x1edtm-done:");
    }
}
