//! Image bombs (issue #13, finding 9): a ~130 KB PNG that decodes to 128 MiB
//! (4096x4096, 16-bit RGBA) is refused from its header, before any pixel is
//! decoded, so many of them at once cost the node no memory. The real
//! `taskmesh up` process over HTTP/2.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use support::*;

/// Bombs sent at once.
const BOMBS: usize = 16;
/// How much the node's resident memory may grow while they are answered: a
/// correctness bound (each bomb decoded would add 128 MiB and more), not a
/// speed assertion.
const RSS_GROWTH_BOUND_KB: u64 = 500 * 1024;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The fashion-mnist definition (resize 28x28, grayscale) with its model uploaded.
async fn fashion_definition(p: &Platform, name: &str) -> Value {
    let model = upload(&p.client(), p, "examples/fashion-mnist/model.onnx").await;
    let mut doc = definition_with("examples/fashion-mnist/function.json", &model);
    doc["name"] = json!(name);
    doc
}

/// The finding's bomb, made by the `image` crate's encoder: 4096x4096 16-bit
/// RGBA zeros, about 130 KB that decode to 128 MiB.
fn bomb() -> Vec<u8> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::NoFilter)
        .write_image(
            &vec![0; 4096 * 4096 * 8],
            4096,
            4096,
            image::ExtendedColorType::Rgba16,
        )
        .unwrap();
    out
}

/// The pid of the `taskmesh up` process serving `data_dir` (it runs the
/// router and the node in one process).
fn taskmesh_pid(data_dir: &Path) -> u32 {
    let needle = data_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_taskmesh = args.first().is_some_and(|a| a.ends_with("taskmesh"));
        if is_taskmesh && args.iter().any(|a| a == "up") && args.contains(&needle) {
            return pid;
        }
    }
    panic!("no taskmesh process serves {needle}");
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Samples the process's resident memory until stopped; keeps the highest.
struct RssSampler {
    peak_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        // Resets the kernel's peak (VmHWM) to the current RSS where allowed,
        // so it is read as a second, gap-free measure of the peak.
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        let peak_kb = Arc::new(AtomicU64::new(status_kb(pid, "VmRSS")));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak_kb, stop) = (peak_kb.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak_kb.fetch_max(status_kb(pid, "VmRSS"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        RssSampler {
            peak_kb,
            stop,
            thread,
        }
    }

    /// The highest resident memory seen (sampled, or the kernel's peak).
    fn stop(self, pid: u32) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler");
        self.peak_kb
            .load(Ordering::Relaxed)
            .max(status_kb(pid, "VmHWM"))
    }
}

#[tokio::test]
async fn concurrent_image_bombs_are_refused_from_their_header_and_cost_no_memory() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let doc = fashion_definition(&p, "fashion-mnist").await;
    register(&client, &p, &doc).await;
    let url = p.router_url("/v1/functions/fashion-mnist/invoke");
    let normal = generated_json("examples/fashion-mnist/sample.json")["image"].clone();
    let label = String::from_utf8(generated("examples/fashion-mnist/sample_label.txt")).unwrap();

    // A normal call first, so the instance is loaded before the baseline.
    let reply = client.post_json(&url, &json!({ "image": normal })).await;
    assert_eq!(reply.status, 200, "{}", reply.json());

    let bomb = bomb();
    assert!(bomb.len() < 200 * 1024, "the bomb is {} bytes", bomb.len());
    let body = Arc::new(json!({ "image": b64(&bomb) }));
    let pid = taskmesh_pid(p.data_dir.path());
    let before_kb = status_kb(pid, "VmRSS");
    let sampler = RssSampler::start(pid);

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..BOMBS {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        calls.spawn(async move { client.post_json(&url, &body).await });
    }
    let mut replies = Vec::new();
    while let Some(reply) = calls.join_next().await {
        replies.push(reply.expect("call task"));
    }
    // A normal image afterwards is still served.
    let after = client.post_json(&url, &json!({ "image": normal })).await;
    // Decoding work that outlived its call would show here.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak_kb = sampler.stop(pid);
    let after_kb = status_kb(pid, "VmRSS");
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    eprintln!(
        "{BOMBS} bombs of {} bytes: statuses {statuses:?}; node RSS {} MiB before, peak {} MiB (+{} MiB), {} MiB after",
        bomb.len(),
        before_kb / 1024,
        peak_kb / 1024,
        peak_kb.saturating_sub(before_kb) / 1024,
        after_kb / 1024
    );

    // Every bomb: 422 invalid_input at its pointer, saying its decoded size and the cap.
    for reply in &replies {
        let err = reply.expect_error(422, "invalid_input");
        assert_eq!(err["details"][0]["pointer"], "/image", "{err}");
        let message = err["details"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("134217728 bytes decoded")
                && message.contains(&format!(
                    "the limit for this input is {} bytes",
                    48 * 1024 * 1024
                )),
            "{message}"
        );
    }
    assert_eq!(after.status, 200, "{}", after.json());
    assert_eq!(after.json()["label"], label.trim());
    assert!(
        peak_kb.saturating_sub(before_kb) < RSS_GROWTH_BOUND_KB,
        "the node's RSS grew by {} MiB (from {} MiB to {} MiB)",
        peak_kb.saturating_sub(before_kb) / 1024,
        before_kb / 1024,
        peak_kb / 1024
    );
}
