//! The HTML report (AVP-CONF-33) rendered by headless Chromium: a run of two
//! implementations (the SDK through its adapter and our built-in decoder)
//! written with --html, screenshotted, and the PNG checked for being a real
//! rendering. scripts/test.sh installs the Debian `chromium` package; the test
//! skips (loudly) only when no Chromium binary exists at all.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chromium() -> Option<PathBuf> {
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    })
}

#[test]
fn html_report_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let adapter = format!(
        "{} {}",
        root().join(".venv/bin/python").display(),
        root()
            .join("conformance/adapters/python/avp_adapter.py")
            .display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_avp"))
        .current_dir(root())
        .args([
            "conformance",
            "run",
            "--only",
            "wire/",
            "--builtin",
            "compatible",
            "--adapter",
            &adapter,
            "--html",
        ])
        .arg(&html)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<th>avp-python</th><th>avp-rs</th>"),
        "matrix header with both implementations"
    );
    assert!(
        page.contains("00000000  41 56 01"),
        "hex dumps of the inputs"
    );
    for remote in ["src=", "<script", "<link", "url(", "@import"] {
        assert!(!page.contains(remote), "not self-contained: {remote}");
    }

    let Some(browser) = chromium() else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: no chromium binary on PATH; scripts/test.sh installs the Debian package `chromium` !!!!!!!!\n"
        );
        return;
    };
    let png = dir.path().join("shot.png");
    let profile = dir.path().join("profile");
    let shot = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,900")
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(
        png.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let info = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("conformance/tests/png_colours.py"))
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let fields: Vec<u64> = String::from_utf8_lossy(&info.stdout)
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    let [width, height, colours] = fields[..] else {
        panic!("{fields:?}")
    };
    assert_eq!((width, height), (1280, 900));
    // Text antialiasing plus the verdict colours of the legend and matrix: a
    // blank or error page has a handful of colours, a rendered report hundreds.
    assert!(
        colours > 200,
        "only {colours} distinct colours: the page did not render"
    );
}
