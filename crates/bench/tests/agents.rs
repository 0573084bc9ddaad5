//! The agents benchmark end to end at a size a debug build runs in
//! seconds: a controller process, 20 simulated agents, the table. No
//! figure is checked, only that every row is there.

use std::process::Command;

#[test]
fn agents_bench_prints_its_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_kumo-bench"))
        .args(["agents", "--counts", "20", "--status-calls", "3"])
        .output()
        .expect("running kumo-bench agents");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kumo-bench agents failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("KiB/agent"), "no table header:\n{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("20 |"))
        .unwrap_or_else(|| panic!("no row for 20 agents:\n{stdout}"));
    assert!(row.contains("≈400"), "no Juju figure beside ours: {row}");
    assert!(
        stdout.contains("20 agents: 20/20 units active and idle"),
        "the agents did not all reach idle:\n{stdout}"
    );
}
