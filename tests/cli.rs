//! End-to-end tests of the `cordon` binary: real files, real processes, real exit codes.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn cordon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(args)
        .env_remove("CORDON_LOG")
        .output()
        .expect("run cordon")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `cordon eval --json` over a generated directory.
fn eval_json(generated: &Path, extra: &[&str]) -> Value {
    let events = generated.join("events.jsonl");
    let labels = generated.join("labels.json");
    let mut args = vec![
        "eval",
        "--events",
        events.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = cordon(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn generate(dir: &Path, seed: &str) -> PathBuf {
    let out = dir.join(format!("gen-{seed}"));
    let o = cordon(&[
        "generate",
        "--seed",
        seed,
        "--agents",
        "12",
        "--duration",
        "3h",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn fingerprint_prints_the_design_test_vector() {
    let o = cordon(&[
        "fingerprint",
        "Send DE89370400440532013000 to Mark.Black-2134@gmail.com, please: now.",
    ]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        r#"["56ccc4dcfc96534b","9cf685bd65e3490c","b36ca970529c23c7"]"#
    );
}

#[test]
fn generate_is_seeded_and_run_finds_the_attacks() {
    let dir = tempfile::tempdir().unwrap();
    let a = generate(dir.path(), "42");
    let b = generate(dir.path(), "42");
    let c = generate(dir.path(), "43");
    let ev_a = std::fs::read(a.join("events.jsonl")).unwrap();
    assert_eq!(ev_a, std::fs::read(b.join("events.jsonl")).unwrap());
    assert_ne!(ev_a, std::fs::read(c.join("events.jsonl")).unwrap());
    let labels: Value =
        serde_json::from_slice(&std::fs::read(a.join("labels.json")).unwrap()).unwrap();
    let attacks: Vec<&str> = labels
        .as_object()
        .unwrap()
        .values()
        .filter(|l| l["label"] == "attack")
        .map(|l| l["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(attacks.len(), 16);

    let alerts = dir.path().join("alerts.jsonl");
    let o = cordon(&[
        "run",
        "--input",
        a.join("events.jsonl").to_str().unwrap(),
        "--alerts",
        alerts.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("0 dead-lettered"), "{}", stderr(&o));
    let found = json_lines(&std::fs::read_to_string(&alerts).unwrap());
    assert!(!found.is_empty());
    for f in &found {
        assert_eq!(f["class_uid"], 2004);
        assert_eq!(f["type_uid"], 200401);
        assert!(f["finding_info"]["uid"].is_string());
        assert!(!f["finding_info"]["related_events"]
            .as_array()
            .unwrap()
            .is_empty());
        for key in [
            "gen_ai.agent.id",
            "mcp.session.id",
            "audit.principal.sub",
            "audit.token.jti",
        ] {
            assert!(f["unmapped"][key].is_string(), "unmapped.{key} in {f}");
        }
        let session = f["unmapped"]["mcp.session.id"].as_str().unwrap();
        assert_eq!(
            labels[session]["label"], "attack",
            "alert on a benign session: {f}"
        );
    }
    let rules: std::collections::HashSet<&str> = found
        .iter()
        .map(|f| f["finding_info"]["analytic"]["uid"].as_str().unwrap())
        .collect();
    assert!(rules.contains("cordon.mcp.secret_egress"), "{rules:?}");
    assert!(
        rules.contains("cordon.mcp.privileged_tool_denied"),
        "{rules:?}"
    );
}

#[test]
fn gateway_formats_are_normalised() {
    let o = cordon(&[
        "run",
        "--input",
        &data("agentgateway.jsonl"),
        "--format",
        "agentgateway",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let found = json_lines(&stdout(&o));
    let ids: Vec<&str> = found
        .iter()
        .map(|f| f["finding_info"]["analytic"]["uid"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "cordon.mcp.credential_file_read",
            "cordon.mcp.privileged_tool_denied",
            "cordon.mcp.egress_unapproved_url",
            "cordon.mcp.chain.credential_then_new_destination"
        ]
    );
    assert_eq!(found[0]["unmapped"]["gen_ai.agent.id"], "agent-coder-1");
    assert_eq!(
        found[0]["unmapped"]["audit.principal.sub"],
        "alice@corp.example"
    );

    let o = cordon(&[
        "run",
        "--input",
        &data("docker.jsonl"),
        "--format",
        "docker",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let found = json_lines(&stdout(&o));
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0]["finding_info"]["analytic"]["uid"],
        "cordon.mcp.privileged_tool_denied"
    );
    assert_eq!(found[0]["unmapped"]["gen_ai.agent.id"], "claude-desktop-7");

    let o = cordon(&[
        "run",
        "--input",
        &data("docker.jsonl"),
        "--format",
        "splunk",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected native, agentgateway or docker"));
}

#[test]
fn bad_input_is_dead_lettered_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut text = std::fs::read(data("bad_input.jsonl")).unwrap();
    let huge = format!(
        "{{\"event.id\":\"huge\",\"@timestamp\":\"2026-11-20T10:00:05Z\",\"blob\":\"{}\"}}\n",
        "x".repeat(3 << 20)
    );
    text.extend_from_slice(huge.as_bytes());
    text.extend_from_slice(
        b"{\"event.id\":\"ok-3\",\"@timestamp\":\"2026-11-20T10:00:06Z\",\"mcp.method.name\":\"tools/call\",\"gen_ai.tool.name\":\"create_user\",\"audit.decision\":\"deny\",\"gen_ai.agent.id\":\"a2\"}\n",
    );
    std::fs::write(&input, &text).unwrap();
    let dl = dir.path().join("dead.jsonl");
    let stats = dir.path().join("stats.json");
    let o = cordon(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--dead-letter",
        dl.to_str().unwrap(),
        "--stats",
        stats.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(s["pipeline"]["records"], 8);
    assert_eq!(s["pipeline"]["dead_lettered"], 5);
    assert_eq!(s["rules"]["cordon.mcp.privileged_tool_denied"]["alerts"], 2);
    assert!(!stderr(&o).contains("panicked"));
    assert!(
        stderr(&o).contains("8 records, 3 events, 5 dead-lettered"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        json_lines(&stdout(&o)).len(),
        2,
        "alerts from the good records on both sides of the bad ones"
    );
    let dead = json_lines(&std::fs::read_to_string(&dl).unwrap());
    let summary: Vec<(u64, &str)> = dead
        .iter()
        .map(|d| (d["line"].as_u64().unwrap(), d["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(summary.len(), 5);
    assert!(summary[0].1.contains("EOF while parsing"), "{summary:?}");
    assert!(
        summary[1]
            .1
            .contains("field `audit.result_bytes`: expected an integer"),
        "{summary:?}"
    );
    assert!(
        summary[2].1.contains("expected a JSON object"),
        "{summary:?}"
    );
    assert!(summary[3].1.contains("invalid unicode"), "{summary:?}");
    assert_eq!(dead[3]["raw_lossy"], true);
    assert!(summary[4].1.contains("over the limit"), "{summary:?}");
    assert_eq!(
        summary.iter().map(|s| s.0).collect::<Vec<_>>(),
        [2, 3, 5, 7, 8]
    );
    for d in &dead {
        assert!(d["source"].as_str().unwrap().ends_with("in.jsonl"));
        assert!(d["raw"].is_string());
    }

    let o = cordon(&["run", "--input", &data("empty.jsonl")]);
    assert!(o.status.success());
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("0 records"));

    let o = cordon(&["run", "--input", "/definitely/not/here.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/definitely/not/here.jsonl"));
}

#[test]
fn stdin_and_gzip_inputs() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["run", "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(data("bad_input.jsonl")).unwrap())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(json_lines(&stdout(&o)).len(), 1);

    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("events.log.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(&std::fs::read(data("bad_input.jsonl")).unwrap())
        .unwrap();
    enc.finish().unwrap();
    let o = cordon(&["run", "--input", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_lines(&stdout(&o)).len(), 1);
}

#[test]
fn rule_errors_name_file_line_and_column() {
    let o = cordon(&["rules", "check", &data("rules_typo")]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("rules_typo/typo.yaml:5:14: user.denied_admin: unknown field `audit.decison`"),
        "{err}"
    );
    assert!(err.contains("did you mean `audit.decision`"), "{err}");

    let o = cordon(&["rules", "check", &data("rules_unbalanced")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unbalanced.yaml:4:20: user.unbalanced: unbalanced parentheses"),
        "{}",
        stderr(&o)
    );

    let o = cordon(&[
        "run",
        "--input",
        &data("empty.jsonl"),
        "--rules",
        &data("rules_typo"),
    ]);
    assert_eq!(o.status.code(), Some(2));

    let o = cordon(&["rules", "check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ok: "));
}

#[test]
fn rules_test_and_list() {
    let o = cordon(&["rules", "test"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(" passed, 0 failed"));

    // Every field a rule may read, baseline features included, and each type-checks.
    let o = cordon(&["rules", "fields"]);
    assert!(o.status.success());
    let fields = stdout(&o);
    let names: Vec<&str> = fields
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.contains(&"gen_ai.agent.id") && names.contains(&"baseline.deny_ratio"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("b.yaml");
    std::fs::write(
        &f,
        "id: t.b\ntitle: t\nseverity: low\nquery: tool where baseline.tool_frequency < 0.01 and baseline.first_method == false\n",
    )
    .unwrap();
    let o = cordon(&["rules", "check", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(
        &f,
        "id: t.b\ntitle: t\nseverity: low\nquery: tool where baseline.deny_ration > 0.9\n",
    )
    .unwrap();
    let o = cordon(&["rules", "check", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("baseline.deny_ratio"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r.yaml");
    std::fs::write(
        &f,
        "id: t.fail\ntitle: t\nseverity: low\nquery: tool where gen_ai.tool.name == \"a\"\ntests:\n  match:\n    - {mcp.method.name: tools/call, gen_ai.tool.name: b}\n",
    )
    .unwrap();
    let o = cordon(&["rules", "test", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("FAIL t.fail: tests.match[0] should match but does not"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("0 passed, 1 failed"), "{}", stdout(&o));

    let o = cordon(&["rules", "list"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("cordon.mcp.secret_egress"));
}

#[test]
fn hunt_over_cordon_events_and_arbitrary_json() {
    let dir = tempfile::tempdir().unwrap();
    let g = generate(dir.path(), "5");
    let events = g.join("events.jsonl");
    let o = cordon(&[
        "hunt",
        r#"tool where gen_ai.tool.name == "send_email" and audit.data_class == "secret""#,
        events.to_str().unwrap(),
        "--print",
        "mcp.session.id",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let labels: Value =
        serde_json::from_slice(&std::fs::read(g.join("labels.json")).unwrap()).unwrap();
    let printed = stdout(&o);
    let sessions: Vec<&str> = printed.lines().map(str::trim).collect();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    for s in sessions {
        assert_eq!(labels[s]["scenario"], "read_then_exfiltrate");
    }

    let f = dir.path().join("proc.jsonl");
    std::fs::write(
        &f,
        concat!(
            r#"{"ts": 1700000002000, "event": {"category": "process"}, "process": {"name": "cmd.exe"}, "seq": 2}"#, "\n",
            r#"{"ts": 1700000001000, "event": {"category": "process"}, "process": {"name": "CMD.EXE"}, "seq": 1}"#, "\n",
            r#"{"ts": 1700000001000, "event": {"category": "process"}, "process": {"name": "cmd.exe"}, "seq": 0}"#, "\n",
            r#"{"ts": 1700000000000, "event": {"category": "network"}, "process": {"name": "cmd.exe"}, "seq": 9}"#, "\n",
        ),
    )
    .unwrap();
    let hunt = |q: &str| {
        cordon(&[
            "hunt",
            q,
            f.to_str().unwrap(),
            "--timestamp-field",
            "ts",
            "--timestamp-format",
            "epoch_ms",
            "--tiebreaker-field",
            "seq",
            "--print",
            "seq",
        ])
    };
    let o = hunt(r#"process where process.name : "cmd.exe""#);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0\n1\n2\n");
    let o = hunt(r#"process where process.name : "cmd.exe" | tail 1"#);
    assert_eq!(stdout(&o), "2\n");
    let o = hunt(r#"any where process.name == "cmd.exe" | head 2"#);
    assert_eq!(stdout(&o), "9\n0\n");
    let o = hunt(r#"process where (process.name == "x""#);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("never closed"), "{}", stderr(&o));
}

#[test]
fn eval_reports_per_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let g = generate(dir.path(), "9");
    let r = eval_json(&g, &[]);
    assert_eq!(r["scenarios"]["read_then_exfiltrate"]["flagged"], 2);
    assert_eq!(r["scenarios"]["probing_after_denials"]["flagged"], 2);
    assert_eq!(r["precision"], 1.0);
    assert_eq!(r["scenarios"]["benign"]["flagged"], 0);
    assert_eq!(r["recall"], 1.0);
}

#[test]
fn demo_shows_alerts() {
    let o = cordon(&["demo", "--agents", "8", "--duration", "4h"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("CRITICAL  cordon.mcp.secret_egress"), "{out}");
    assert!(out.contains("detection by scenario"), "{out}");
}

#[test]
fn usage_errors_exit_2() {
    let o = cordon(&["run"]);
    assert_eq!(o.status.code(), Some(2));
    let o = cordon(&["generate", "--out", "/tmp/x", "--attacks", "rugpull"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("rug_pull"));
    let o = cordon(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

/// The rule example of the README loads and passes its own tests.
#[test]
fn readme_rule_example_works() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("```yaml\n").expect("a yaml block") + 8;
    let len = readme[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("readme.yaml");
    std::fs::write(&f, &readme[start..start + len]).unwrap();
    let o = cordon(&["rules", "test", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("2 passed, 0 failed"), "{}", stdout(&o));
}

/// The contract of the built-in pack: on `cordon generate --seed 1 --agents 200 --duration 24h`
/// it catches every generated attack scenario with no false positive on benign sessions; and
/// the contract of the baseline rules alone, after warm-up.
#[test]
fn builtin_pack_catches_every_scenario_without_false_positives() {
    let dir = tempfile::tempdir().unwrap();
    // A day of 200 agents; `extra` adds generator flags.
    let day = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec![
            "generate",
            "--seed",
            "1",
            "--agents",
            "200",
            "--duration",
            "24h",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        let o = cordon(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        out
    };
    let out = day("g", &[]);
    let r = eval_json(&out, &[]);
    for (name, s) in r["scenarios"].as_object().unwrap() {
        if name == "benign" {
            assert_eq!(s["flagged"], 0, "false positives: {s}");
            assert!(s["sessions"].as_u64().unwrap() > 5000);
        } else {
            assert_eq!(s["missed"], 0, "{name} missed: {s}");
        }
    }
    assert_eq!(r["scenarios"].as_object().unwrap().len(), 9);

    // The baseline rules alone, after the agents' warm-up: the burst, scraping and lateral
    // scenarios are caught on baselines only, with under 1% false positives (five sessions
    // of each attack, so that some start after their agent's warm-up).
    let out = day("g5", &["--attack-sessions", "5"]);
    let r = eval_json(
        &out,
        &[
            "--only",
            "cordon.mcp.anomaly.*",
            "--only",
            "cordon.mcp.chain.secret_then_new_recipient",
            "--warm-up",
            "2h",
        ],
    );
    assert!(r["excluded_warm_up"].as_u64().unwrap() > 0);
    for name in [
        "burst_scraping",
        "lateral_movement",
        "probing_after_denials",
    ] {
        let s = &r["scenarios"][name];
        assert_eq!(s["missed"], 0, "{name} missed: {s}");
    }
    assert!(
        r["false_positive_rate"].as_f64().unwrap() < 0.01,
        "{}",
        r["false_positive_rate"]
    );
}

#[test]
fn a_catalogue_file_teaches_unknown_tools() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("e.jsonl");
    std::fs::write(
        &events,
        concat!(
            r#"{"@timestamp":"2026-11-20T10:00:00Z","mcp.method.name":"tools/call","gen_ai.agent.id":"a","mcp.session.id":"s","audit.target":"acme","gen_ai.tool.name":"read_file","audit.data_class":"secret","audit.decision":"allow"}"#, "\n",
            r#"{"@timestamp":"2026-11-20T10:00:05Z","mcp.method.name":"tools/call","gen_ai.agent.id":"a","mcp.session.id":"s","audit.target":"acme","gen_ai.tool.name":"zap","audit.decision":"allow"}"#, "\n",
        ),
    )
    .unwrap();
    let chain = "cordon.mcp.chain.secret_read_then_egress";
    let o = cordon(&["run", "--input", events.to_str().unwrap()]);
    assert!(!stdout(&o).contains(chain), "zap is unknown: no egress");
    let cat = dir.path().join("catalogue.yaml");
    std::fs::write(&cat, "servers:\n  acme:\n    zap: egress\n").unwrap();
    let o = cordon(&[
        "run",
        "--catalogue",
        cat.to_str().unwrap(),
        "--input",
        events.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(chain), "{}", stdout(&o));
    std::fs::write(&cat, "servers:\n  acme:\n    zap: teleport\n").unwrap();
    let o = cordon(&[
        "run",
        "--catalogue",
        cat.to_str().unwrap(),
        "--input",
        events.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("teleport"), "{}", stderr(&o));
}

#[test]
fn hunt_runs_sequences_and_prints_missing_steps() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.jsonl");
    std::fs::write(
        &f,
        concat!(
            r#"{"t": 1, "event": {"category": "process"}, "user": "u1", "name": "a", "n": 1}"#,
            "\n",
            r#"{"t": 2, "event": {"category": "process"}, "user": "u2", "name": "a", "n": 2}"#,
            "\n",
            r#"{"t": 3, "event": {"category": "process"}, "user": "u2", "name": "x", "n": 3}"#,
            "\n",
            r#"{"t": 4, "event": {"category": "process"}, "user": "u1", "name": "b", "n": 4}"#,
            "\n",
            r#"{"t": 5, "event": {"category": "process"}, "user": "u2", "name": "b", "n": 5}"#,
            "\n",
        ),
    )
    .unwrap();
    let hunt = |q: &str| {
        cordon(&[
            "hunt",
            q,
            f.to_str().unwrap(),
            "--timestamp-field",
            "t",
            "--timestamp-format",
            "epoch_s",
            "--print",
            "n",
        ])
    };
    let o = hunt(r#"sequence by user [process where name == "a"] [process where name == "b"]"#);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "1\n4\n2\n5\n");
    let o = hunt(
        r#"sequence by user [process where name == "a"] ![process where name == "x"] [process where name == "b"]"#,
    );
    assert_eq!(stdout(&o), "1\n-1\n4\n");
    let o = hunt(
        r#"sequence by user [process where name == "a"] [process where name == "b"] | tail 1"#,
    );
    assert_eq!(stdout(&o), "2\n5\n");
    let o = hunt(r#"sample by user [process where name == "b"] [process where name == "a"]"#);
    assert_eq!(stdout(&o), "4\n1\n5\n2\n");
}

#[test]
fn score_prints_tail_probabilities_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g");
    let o = cordon(&[
        "generate",
        "--seed",
        "5",
        "--agents",
        "10",
        "--duration",
        "8h",
        "--attacks",
        "burst_scraping",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let events = out.join("events.jsonl");
    let o = cordon(&[
        "score",
        "--field",
        "@rate",
        "--by",
        "gen_ai.agent.id",
        events.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("timestamp,key,value,score"));
    let labels: Value =
        serde_json::from_slice(&std::fs::read(out.join("labels.json")).unwrap()).unwrap();
    let evs: Vec<Value> = json_lines(&std::fs::read_to_string(&events).unwrap());
    let (mut attack_hi, mut benign_hi, mut n) = (0, 0, 0);
    for (line, ev) in lines.zip(&evs) {
        n += 1;
        let score: f64 = line.rsplit(',').next().unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&score), "{line}");
        let session = ev["mcp.session.id"].as_str().unwrap();
        if score > 0.9999 {
            if labels[session]["label"] == "attack" {
                attack_hi += 1;
            } else {
                benign_hi += 1;
            }
        }
    }
    assert_eq!(n, evs.len(), "one line per event");
    assert!(
        attack_hi > 100,
        "the scraping burst scores near 1: {attack_hi}"
    );
    assert_eq!(benign_hi, 0);

    let o = cordon(&[
        "score",
        "--field",
        "audit.result_bytes",
        "--by",
        "gen_ai.agent.id",
        events.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("records skipped"),
        "events without result bytes are reported"
    );
}

#[test]
fn baselines_persist_across_runs_and_can_be_shown() {
    let dir = tempfile::tempdir().unwrap();
    let g = generate(dir.path(), "8");
    let events = g.join("events.jsonl");
    let state = dir.path().join("profiles.json");
    let o = cordon(&[
        "run",
        "--input",
        events.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--alerts",
        dir.path().join("a.jsonl").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(state.exists());
    let first = json_lines(&std::fs::read_to_string(&events).unwrap())[0]["gen_ai.agent.id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = cordon(&[
        "baseline",
        "show",
        &first,
        "--state",
        state.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(p["events"].as_u64().unwrap() > 50, "{p}");
    assert!(p["distinct_tools"].as_u64().unwrap() >= 3, "{p}");
    assert_eq!(
        p["calls_per_minute_by_hour_utc"].as_array().unwrap().len(),
        24
    );
    assert!(p["sessions_learnt"].as_u64().unwrap() > 0, "{p}");
    assert!(p["deny_ratio"].as_f64().unwrap() > 0.0, "{p}");
    let o = cordon(&[
        "baseline",
        "show",
        &first,
        "--state",
        state.to_str().unwrap(),
    ]);
    let text = stdout(&o);
    for line in [
        "calls per minute",
        "by hour of day (UTC)",
        "deny / error ratio",
        "typical session",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let o = cordon(&[
        "baseline",
        "show",
        "agent-nobody",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no profile for agent"),
        "{}",
        stderr(&o)
    );
    // A damaged snapshot: the run reports it, starts fresh, and writes a good one.
    std::fs::write(
        &state,
        b"{\"format\":\"cordon-profiles\",\"version\":1,\"agents\":{",
    )
    .unwrap();
    let o = cordon(&[
        "run",
        "--input",
        events.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--alerts",
        dir.path().join("b.jsonl").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("starting with fresh baselines"),
        "{}",
        stderr(&o)
    );
    let o = cordon(&[
        "baseline",
        "show",
        &first,
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}
