//! The server against real TFTP clients: tftp-hpa's `tftp` (RFC 1350 only),
//! `atftp` (blksize, tsize, timeout, windowsize) and curl (blksize, tsize).

mod common;

use std::time::Duration;

use common::*;
use kumo_tftp::Limits;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_downloads_a_multi_megabyte_file() {
    let server = TestServer::start().await;
    let sum = server.add_file("images/kernel", 5 * MIB + 123, 1);
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("kernel");
    let (o, text) = tftp_hpa_get(server.port, "binary", "images/kernel", &local).await;
    assert!(o.status.success(), "{text}");
    assert_eq!(sha256_file(&local), sum, "{text}");
    let c = counters_until(&server.counters, |c| c.transfers_completed == 1).await;
    assert_eq!(c.bytes_sent, (5 * MIB + 123) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_gets_several_files_in_one_session() {
    // One client socket (one TID) for several transfers in a row.
    let server = TestServer::start().await;
    let sums: Vec<String> = (0..3)
        .map(|i| server.add_file(&format!("part{i}"), 20_000 + i, 20 + i as u64))
        .collect();
    let out = tempfile::tempdir().unwrap();
    let port = server.port.to_string();
    let output = tokio::process::Command::new(tftp_hpa())
        .args([
            "-m",
            "binary",
            "127.0.0.1",
            &port,
            "-c",
            "get",
            "part0",
            "part1",
            "part2",
        ])
        .current_dir(out.path())
        .kill_on_drop(true)
        .output();
    let o = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("tftp finishes")
        .unwrap();
    let text = format!("{o:?}");
    assert!(o.status.success(), "{text}");
    for (i, sum) in sums.iter().enumerate() {
        assert_eq!(
            &sha256_file(&out.path().join(format!("part{i}"))),
            sum,
            "{text}"
        );
    }
    let c = counters_until(&server.counters, |c| c.transfers_completed == 3).await;
    assert_eq!(c.duplicate_requests, 0, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_leading_slash_maps_to_the_root() {
    let server = TestServer::start().await;
    let sum = server.add_file("pxelinux.cfg/default", 3000, 2);
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("default");
    let (o, text) = tftp_hpa_get(server.port, "binary", "/pxelinux.cfg/default", &local).await;
    assert!(o.status.success(), "{text}");
    assert_eq!(sha256_file(&local), sum, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_rolls_over_past_65535_blocks() {
    let server = TestServer::start().await;
    // 65536 full blocks of 512 plus a partial one: block numbers wrap to 0.
    let len = 65536 * 512 + 1000;
    let sum = server.add_file("big.img", len, 3);
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("big.img");
    let (o, text) = tftp_hpa_get(server.port, "binary", "big.img", &local).await;
    assert!(o.status.success(), "{text}");
    assert_eq!(std::fs::metadata(&local).unwrap().len(), len as u64);
    assert_eq!(sha256_file(&local), sum, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_netascii_mode_is_served_unchanged_for_text_without_cr() {
    let server = TestServer::start().await;
    let text_file = "DEFAULT linux\nLABEL linux\n  KERNEL vmlinuz\n".repeat(40);
    std::fs::write(server.path("boot.txt"), &text_file).unwrap();
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("boot.txt");
    let (o, text) = tftp_hpa_get(server.port, "ascii", "boot.txt", &local).await;
    assert!(o.status.success(), "{text}");
    assert_eq!(std::fs::read_to_string(&local).unwrap(), text_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_missing_file_is_file_not_found() {
    let server = TestServer::start().await;
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("x");
    let (_, text) = tftp_hpa_get(server.port, "binary", "no/such/file", &local).await;
    assert!(text.contains("Error code 1: file not found"), "{text}");
    counters_until(&server.counters, |c| c.not_found == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_path_traversal_is_an_access_violation() {
    let server = TestServer::start().await;
    // A secret next to the root, and a symlink inside the root pointing at it.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), server.path("escape")).unwrap();
    std::os::unix::fs::symlink(outside.path(), server.path("outdir")).unwrap();
    // A symlink that stays inside the root is fine.
    let sum = server.add_file("real/file", 100, 4);
    std::os::unix::fs::symlink("real/file", server.path("alias")).unwrap();
    std::fs::create_dir(server.path("dir")).unwrap();

    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("x");
    let secret_rel = format!(
        "../{}/secret",
        outside.path().file_name().unwrap().to_str().unwrap()
    );
    for remote in [
        secret_rel.as_str(),
        "/../../../../etc/passwd",
        "real/../../etc/passwd",
        "escape",
        "outdir/secret",
        "dir",
    ] {
        let (_, text) = tftp_hpa_get(server.port, "binary", remote, &local).await;
        assert!(
            text.contains("Error code 2: access violation"),
            "{remote}: {text}"
        );
    }
    // An absolute path is taken below the root, not from /.
    let (_, text) = tftp_hpa_get(server.port, "binary", "/etc/passwd", &local).await;
    assert!(text.contains("Error code 1: file not found"), "{text}");

    let (o, text) = tftp_hpa_get(server.port, "binary", "alias", &local).await;
    assert!(o.status.success(), "{text}");
    assert_eq!(sha256_file(&local), sum);
    counters_until(&server.counters, |c| c.access_violations == 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_put_is_refused_as_read_only() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("upload");
    std::fs::write(&local, "data").unwrap();
    let port = server.port.to_string();
    let (_, text) = run(
        &tftp_hpa(),
        &[
            "-m",
            "binary",
            "127.0.0.1",
            &port,
            "-c",
            "put",
            local.to_str().unwrap(),
            "upload",
        ],
        Duration::from_secs(60),
    )
    .await;
    assert!(text.contains("Error code 2: read-only server"), "{text}");
    assert!(!server.path("upload").exists());
    counters_until(&server.counters, |c| c.write_refused == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_downloads_are_all_correct() {
    let server = TestServer::start().await;
    let mut sums = Vec::new();
    for i in 0..20 {
        sums.push(server.add_file(&format!("f{i}"), 300_000 + i * 7919, 100 + i as u64));
    }
    let out = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let local = out.path().join(format!("f{i}"));
        let port = server.port;
        tasks.push(tokio::spawn(async move {
            // Half lockstep with tftp-hpa, half windowed with atftp.
            let (o, text) = if i % 2 == 0 {
                tftp_hpa_get(port, "binary", &format!("f{i}"), &local).await
            } else {
                atftp_get(
                    port,
                    &["blksize 1024", "windowsize 4", "tsize enable"],
                    &format!("f{i}"),
                    &local,
                )
                .await
            };
            assert!(o.status.success(), "{text}");
            (sha256_file(&local), text)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (sum, text) = t.await.unwrap();
        assert_eq!(sum, sums[i], "f{i}: {text}");
    }
    let c = counters_until(&server.counters, |c| {
        c.transfers_completed == 20 && c.transfers_active == 0
    })
    .await;
    assert_eq!(c.transfers_failed, 0, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_negotiates_blksize_and_tsize() {
    let server = TestServer::start().await;
    let len = 2 * MIB + 77;
    let sum = server.add_file("initrd", len, 5);
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("initrd");
    let (o, text) = atftp_get(
        server.port,
        &["blksize 1428", "tsize enable", "timeout 2"],
        "initrd",
        &local,
    )
    .await;
    assert!(o.status.success(), "{text}");
    assert!(text.contains("received OACK"), "{text}");
    assert!(text.contains("blksize: 1428"), "{text}");
    assert!(text.contains(&format!("tsize: {len}")), "{text}");
    assert!(text.contains("timeout: 2"), "{text}");
    assert_eq!(sha256_file(&local), sum, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_windowsize_transfer() {
    let server = TestServer::start().await;
    let len = 4 * MIB + 5;
    let sum = server.add_file("rootfs", len, 6);
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("rootfs");
    let (o, text) = atftp_get(
        server.port,
        &["blksize 1468", "windowsize 16", "tsize enable"],
        "rootfs",
        &local,
    )
    .await;
    assert!(o.status.success(), "{text}");
    assert!(text.contains("windowsize: 16"), "{text}");
    assert_eq!(sha256_file(&local), sum, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_windowsize_is_capped_by_the_server_limit() {
    let server = TestServer::start_with(Limits {
        max_windowsize: 8,
        max_blksize: 1024,
        ..Limits::default()
    })
    .await;
    let sum = server.add_file("f", 200_000, 7);
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("f");
    let (o, text) = atftp_get(server.port, &["blksize 8192", "windowsize 64"], "f", &local).await;
    assert!(o.status.success(), "{text}");
    assert!(text.contains("windowsize: 8"), "{text}");
    assert!(text.contains("blksize: 1024"), "{text}");
    assert_eq!(sha256_file(&local), sum, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_blksize_8_rolls_over() {
    let server = TestServer::start().await;
    // 65536 blocks of 8 bytes is 512 KiB; go past it.
    let len = 65536 * 8 + 8 * 10 + 3;
    let sum = server.add_file("small-blocks", len, 8);
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("small-blocks");
    let (o, text) = atftp_get(server.port, &["blksize 8"], "small-blocks", &local).await;
    // --trace prints every packet; keep failure messages short.
    let tail = &text[text.len().saturating_sub(2000)..];
    assert!(o.status.success(), "{tail}");
    assert_eq!(sha256_file(&local), sum, "{tail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_downloads_with_blksize() {
    let server = TestServer::start().await;
    let len = 3 * MIB + 1;
    let sum = server.add_file("efi/grubx64.efi", len, 9);
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("grubx64.efi");
    let url = format!("tftp://127.0.0.1:{}/efi/grubx64.efi", server.port);
    let (o, text) = run(
        &curl(),
        &[
            "--silent",
            "--show-error",
            "--tftp-blksize",
            "1468",
            "-o",
            local.to_str().unwrap(),
            &url,
        ],
        Duration::from_secs(300),
    )
    .await;
    assert!(o.status.success(), "{text}");
    assert_eq!(sha256_file(&local), sum, "{text}");

    let url = format!("tftp://127.0.0.1:{}/missing", server.port);
    let (o, text) = run(
        &curl(),
        &["--silent", "--show-error", "-o", "/dev/null", &url],
        Duration::from_secs(60),
    )
    .await;
    // Exit 68 is CURLE_TFTP_NOTFOUND. curl 7.88 prints a stale
    // "getpeername() failed" message instead of the server's text
    // (curl/curl#11332, fixed in 8.2), so the code is what to check.
    assert_eq!(o.status.code(), Some(68), "{text}");
}
