//! The report: a markdown table per engine, the amplification table, and the CI checks with
//! the figures that decided them.

use std::fmt::Write;

use crate::amplification::{Case, Source};
use crate::attacks::Attack;
use crate::legit::{ANSWER_WITHIN, ProbeStats};
use crate::{AttackOutcome, EngineRun, REQUIRED_OK_PERCENT, RSS_BOUND_MIB};

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// "99.0 / 3.2": answered within 1 s, in %, and the p99 latency of those, in ms.
fn probe_cell(stats: &ProbeStats) -> String {
    match stats.percentile(0.99) {
        Some(p99) => format!(
            "{:.1} / {:.1}",
            stats.ok_percent(),
            p99.as_secs_f64() * 1000.0
        ),
        None => format!("{:.1} / –", stats.ok_percent()),
    }
}

fn rss_cell(outcome: &AttackOutcome) -> String {
    match (outcome.before, outcome.after) {
        (Some(before), Some(after)) => format!(
            "{:.1} → {:.1} ({:.1})",
            mib(before.rss_kib),
            mib(after.rss_kib),
            mib(after.peak_rss_kib)
        ),
        (Some(before), None) => format!("{:.1} → gone", mib(before.rss_kib)),
        _ => "–".into(),
    }
}

pub fn tables(runs: &[EngineRun], secs: u64) -> String {
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut out = String::new();
    for run in runs.iter().filter(|r| !r.attacks.is_empty()) {
        let _ = writeln!(
            out,
            "\n## hayate under attack: {} engine ({build} build, legitimate client {secs} s per attack, 2 workers)\n",
            run.engine
        );
        out += "| attack | sent | legit UDP ok % / p99 ms | legit HTTP ok % / p99 ms | healthz ok % / p99 ms | tracker CPU (cores) | RSS before → after (peak) MiB |\n";
        out += "|---|---|---|---|---|---|---|\n";
        let mut notes = Vec::new();
        for attack_run in &run.attacks {
            let name = attack_run.attack.name();
            let outcome = match &attack_run.outcome {
                Ok(outcome) => outcome,
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "| {name} | tracker did not start | – | – | – | – | – |"
                    );
                    notes.push(format!("{name}: {}", e.lines().next().unwrap_or_default()));
                    continue;
                }
            };
            let legit = &outcome.legit;
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} |",
                outcome.flood.sent,
                probe_cell(&legit.udp),
                probe_cell(&legit.http),
                legit.healthz.as_ref().map_or("–".into(), probe_cell),
                outcome
                    .cpu_cores()
                    .map_or("–".into(), |c| format!("{c:.2}")),
                rss_cell(outcome),
            );
            notes.extend(attack_notes(attack_run.attack, outcome));
        }
        if !notes.is_empty() {
            out += "\nNotes:\n";
            for note in notes {
                let _ = writeln!(out, "- {note}");
            }
        }
    }
    if runs.iter().any(|r| r.amplification.is_some()) {
        out += &amplification_table(runs);
    }
    out
}

fn attack_notes(attack: Attack, outcome: &AttackOutcome) -> Vec<String> {
    let name = attack.name();
    let mut notes: Vec<String> = outcome
        .flood
        .notes
        .iter()
        .map(|n| format!("{name}: {n}"))
        .collect();
    let legit = &outcome.legit;
    let mut probes = vec![
        format!("UDP {}", legit.udp.describe()),
        format!("HTTP {}", legit.http.describe()),
    ];
    if let Some(healthz) = &legit.healthz {
        probes.push(format!("healthz {}", healthz.describe()));
    }
    notes.push(format!("{name}: legit {}", probes.join("; ")));
    let mut tracker = Vec::new();
    if let Some((torrents, peers)) = outcome.store {
        tracker.push(format!("{torrents} torrents, {peers} peers stored"));
    }
    if let Some(before) = outcome.before {
        let watch = &outcome.rss_watch;
        let grown_mib = mib(watch.peak_kib.saturating_sub(before.rss_kib));
        // Only growth worth a reader's attention: a store filling up, buffers without bound.
        if grown_mib >= 10.0 {
            let secs = watch.peak_after.as_secs_f64();
            tracker.push(format!(
                "RSS peaked at {:.0} MiB {secs:.1} s into the flood (+{grown_mib:.0} MiB, {:.0} MiB/s)",
                mib(watch.peak_kib),
                grown_mib / secs.max(1e-9)
            ));
        }
    }
    if let Some(after) = outcome.after {
        tracker.push(format!("{} open descriptors", after.open_fds));
    }
    if !outcome.alive_at_end {
        tracker.push(format!(
            "NOT RUNNING at the end ({:?})",
            outcome.stop.exited_early
        ));
    } else if outcome.stop.needed_sigkill {
        tracker.push("did not stop within 3 s of SIGTERM (killed)".into());
    } else if let Some(status) = outcome.stop.status.filter(|s| !s.success()) {
        tracker.push(format!("exited with {status} on SIGTERM"));
    }
    if outcome.log_lines > 0 {
        tracker.push(format!(
            "logged {} lines, the last: {}",
            outcome.log_lines,
            outcome.last_log_line.as_deref().unwrap_or_default().trim()
        ));
    }
    if !tracker.is_empty() {
        notes.push(format!("{name}: tracker {}", tracker.join("; ")));
    }
    if let Some(reason) = &outcome.rss_watch.stopped_early {
        notes.push(format!("{name}: {reason}"));
    }
    notes
}

fn source_label(source: Source) -> &'static str {
    match source {
        Source::Handshake => "anyone (handshake)",
        Source::Verified => "verified",
        Source::Unverified => "unverified (error)",
    }
}

fn amplification_table(runs: &[EngineRun]) -> String {
    let mut out = String::from(
        "\n## UDP amplification: the largest reply / request ratio per kind of request\n\n",
    );
    let measured: Vec<(&str, &Vec<Case>)> = runs
        .iter()
        .filter_map(|r| match &r.amplification {
            Some(Ok(cases)) => Some((r.engine, cases)),
            _ => None,
        })
        .collect();
    for run in runs {
        if let Some(Err(e)) = &run.amplification {
            let _ = writeln!(
                out,
                "{}: {}\n",
                run.engine,
                e.lines().next().unwrap_or_default()
            );
        }
    }
    let Some((_, first)) = measured.first() else {
        return out;
    };
    out += "| request | source |";
    for (engine, _) in &measured {
        let _ = write!(out, " {engine}: replies / sent, max ratio (B → B) |");
    }
    out += " reply at the max |\n|---|---|";
    out += &"---|".repeat(measured.len() + 1);
    out += "\n";
    for (i, case) in first.iter().enumerate() {
        let _ = write!(out, "| {} | {} |", case.label, source_label(case.source));
        let mut reply = String::from("no reply");
        for (_, cases) in &measured {
            let case = &cases[i];
            match &case.worst {
                Some(w) => {
                    let _ = write!(
                        out,
                        " {}/{}, **{:.2}** ({} → {}) |",
                        case.replies,
                        case.requests,
                        w.ratio(),
                        w.request_bytes,
                        w.reply_bytes
                    );
                    reply = w.reply.clone();
                }
                None => {
                    let _ = write!(out, " 0/{}, – |", case.requests);
                }
            }
        }
        let _ = writeln!(out, " {reply} |");
    }
    let unanswered: Vec<String> = first
        .iter()
        .enumerate()
        .filter_map(|(i, case)| {
            let per_engine: Vec<String> = measured
                .iter()
                .filter_map(|(engine, cases)| {
                    Some(format!("{engine} {}", cases[i].describe_unanswered()?))
                })
                .collect();
            (!per_engine.is_empty()).then(|| format!("{}: {}", case.label, per_engine.join("; ")))
        })
        .collect();
    if !unanswered.is_empty() {
        out += "\nRequests without a reply, by length:\n";
        for line in unanswered {
            let _ = writeln!(out, "- {line}");
        }
    }
    out
}

pub struct Check {
    pub passed: bool,
    pub what: String,
}

fn check(passed: bool, what: String) -> Check {
    Check { passed, what }
}

/// The CI assertions, each with the figures that decided it.
pub fn checks(runs: &[EngineRun]) -> Vec<Check> {
    let mut checks = Vec::new();
    for run in runs {
        let engine = run.engine;
        for attack_run in &run.attacks {
            let name = attack_run.attack.name();
            let outcome = match &attack_run.outcome {
                Ok(outcome) => outcome,
                Err(e) => {
                    checks.push(check(
                        false,
                        format!("{engine} {name}: the tracker started: {e}"),
                    ));
                    continue;
                }
            };
            checks.push(check(
                outcome.alive_at_end,
                format!(
                    "{engine} {name}: tracker still running after the attack{}",
                    if outcome.alive_at_end {
                        String::new()
                    } else {
                        format!(" (it exited: {:?})", outcome.stop.exited_early)
                    }
                ),
            ));
            let peak = outcome.after.map(|a| mib(a.peak_rss_kib));
            checks.push(check(
                peak.is_some_and(|p| p < RSS_BOUND_MIB)
                    && outcome.rss_watch.stopped_early.is_none(),
                format!(
                    "{engine} {name}: tracker peak RSS {} MiB, bound < {RSS_BOUND_MIB:.0} MiB{}",
                    peak.map_or("unknown".into(), |p| format!("{p:.1}")),
                    outcome
                        .rss_watch
                        .stopped_early
                        .as_ref()
                        .map_or(String::new(), |r| format!(" ({r})")),
                ),
            ));
            if attack_run.attack.must_keep_legit_service() {
                let legit = &outcome.legit;
                let mut probes = vec![
                    ("UDP connect+announce", &legit.udp),
                    ("HTTP announce", &legit.http),
                ];
                if let Some(healthz) = &legit.healthz {
                    probes.push(("GET /healthz", healthz));
                }
                for (label, stats) in probes {
                    checks.push(check(
                        stats.ok_percent() >= REQUIRED_OK_PERCENT,
                        format!(
                            "{engine} {name}: legit {label} answered within {} s: {:.1}% ({}), required ≥ {REQUIRED_OK_PERCENT:.0}%",
                            ANSWER_WITHIN.as_secs(),
                            stats.ok_percent(),
                            stats.describe()
                        ),
                    ));
                }
            }
        }
        match &run.amplification {
            None => {}
            Some(Err(e)) => checks.push(check(false, format!("{engine} amplification: {e}"))),
            Some(Ok(cases)) => {
                for case in cases.iter().filter(|c| c.source == Source::Unverified) {
                    let what = match &case.worst {
                        Some(w) => format!(
                            "largest reply / request {:.2} ({} B → {} B, {})",
                            w.ratio(),
                            w.request_bytes,
                            w.reply_bytes,
                            w.reply
                        ),
                        None => "no replies".into(),
                    };
                    checks.push(check(
                        case.worst.as_ref().is_none_or(|w| w.reply_bytes <= w.request_bytes),
                        format!(
                            "{engine} UDP error replies to unverified sources no larger than the request, {}: {what}",
                            case.label
                        ),
                    ));
                }
            }
        }
    }
    checks
}

pub fn describe_checks(checks: &[Check], full: bool) -> String {
    let failed = checks.iter().filter(|c| !c.passed).count();
    let mut out = format!(
        "\n## Checks{}: {} passed, {failed} failed\n\n",
        if full {
            " (informative in --full mode)"
        } else {
            ""
        },
        checks.len() - failed
    );
    for c in checks {
        let _ = writeln!(out, "{} {}", if c.passed { "PASS" } else { "FAIL" }, c.what);
    }
    out
}
