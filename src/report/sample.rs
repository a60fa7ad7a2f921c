/*! A made-up [`Summary`] that fills every table and figure of the report, for the report's tests
and for trying `scripts/check-report` before a reproduction has run. Its numbers are synthetic
(smooth curves from a formula, not measurements), and its preset is called `sample` so a page
made from it cannot be mistaken for results.
*/

use std::collections::BTreeMap;

use crate::model::ArchConfig;
use crate::pipeline::studies::EioVariant;
use crate::pipeline::summary::{Curve, MatrixResult, ModelResult, StabilityResult, Summary};
use crate::train::EpochRecord;

/// Rounds to 4 decimals, like an accuracy over 10,000 images, so the numbers look like ones.
fn r4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Accuracy that decays with eps at `rate`, from `clean`.
fn decay(clean: f64, rate: f64, eps: &[f64]) -> Vec<f64> {
    eps.iter().map(|e| r4(clean * (-rate * e * 100.0).exp())).collect()
}

/// The sample Summary: eight models (ensembles, selected members, EIO with n = 2, adversarial
/// training; one without black-box numbers), two transferability matrices, eight derived paths
/// and three training runs.
pub fn sample_summary() -> Summary {
    let eps_blackbox = vec![0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07];
    // Not sorted and with a radius the paper has no column for: the tables must cope.
    let eps_whitebox = vec![0.005, 0.01, 0.02, 0.03];
    let model = |name: &str, method: &str, members, selected, adv, clean: f64, bb: f64, wb: f64| {
        ModelResult {
            name: name.into(),
            method: method.into(),
            members,
            selected,
            adv_training: adv,
            file: format!(
                "models/{}.safetensors",
                name.to_lowercase().replace(|c: char| !c.is_alphanumeric(), "-")
            ),
            clean,
            whitebox: decay(clean, wb, &eps_whitebox),
            blackbox: if bb > 0.0 { decay(clean, bb, &eps_blackbox) } else { Vec::new() },
            train_secs: 600.0 * members as f64 + 1000.0 * clean,
            train_epochs: 10 * members,
            epoch_secs: Some(60.0 + 100.0 * clean),
            epoch_device: Some("cuda".into()),
            rgn: (method == "eio").then(|| ArchConfig::rgn(2)),
            variant: None,
            peak_memory_bytes: None,
        }
    };
    let mut models = vec![
        model("baseline (1 of 3)", "baseline", 3, Some(0), false, 0.9137, 2.43, 4.81),
        model("baseline ensemble of 3", "baseline", 3, None, false, 0.9262, 2.11, 4.53),
        model("DVERGE (1 of 3)", "dverge", 3, Some(0), false, 0.8873, 0.57, 1.93),
        model("DVERGE ensemble of 3", "dverge", 3, None, false, 0.8991, 0.49, 1.77),
        model("GAL (1 of 3), white-box only", "gal", 3, Some(0), false, 0.8519, 0.0, 2.21),
        model("EIO (derived, fine-tuned)", "eio", 1, None, false, 0.8811, 0.38, 0.91),
        model("EIO (3 derived paths)", "eio", 3, None, false, 0.9023, 0.36, 0.83),
        model("EIO+AdvT (derived)", "eio", 1, None, true, 0.7714, 0.27, 0.44),
        model("DVERGE+AdvT (1 of 3)", "dverge", 3, Some(1), true, 0.7921, 0.31, 0.52),
    ];
    models[5].peak_memory_bytes = Some(1_610_612_736);
    // The hyper-parameter studies (Fig. 5, 6; Table 2's n = 3).
    let studies = [
        EioVariant::paper().with(|v| v.paths = 2),
        EioVariant::paper().with(|v| {
            v.paths = 2;
            v.sub_models = 3;
        }),
        EioVariant::paper().with(|v| v.eps_d = 0.03),
        EioVariant::paper().with(|v| v.copies = 3),
    ];
    for (k, v) in studies.into_iter().enumerate() {
        let mut m = model(
            &v.label(),
            "eio",
            v.sub_models,
            None,
            false,
            0.87 - 0.01 * k as f64,
            0.4 + 0.05 * k as f64,
            0.9,
        );
        m.rgn = Some(ArchConfig::rgn(v.copies));
        m.variant = Some(v);
        models.push(m);
    }
    let matrix = |name: &str, off: f64| {
        let labels: Vec<String> = (1..=3).map(|i| format!("{name} #{i}")).collect();
        let success = (0..3)
            .map(|i| {
                (0..3)
                    .map(|j| {
                        if i == j {
                            r4(0.9913 - 0.0071 * i as f64)
                        } else {
                            r4(off + 0.0137 * (i + 2 * j) as f64)
                        }
                    })
                    .collect()
            })
            .collect();
        MatrixResult { name: name.into(), labels, eps: 0.03, success }
    };
    let stability = StabilityResult {
        eps: vec![0.01, 0.02, 0.03],
        paths: (0..8)
            .map(|k| {
                let clean = r4(0.8712 + 0.0023 * k as f64);
                (clean, decay(clean, 0.9 + 0.017 * k as f64, &[0.01, 0.02, 0.03]))
            })
            .collect(),
    };
    let curve = |name: &str, method: &str, start: f64| Curve {
        name: name.into(),
        method: method.into(),
        epochs: (1..=4)
            .map(|e| EpochRecord {
                epoch: e,
                lr: 0.1,
                train_loss: r4(start / e as f64),
                train_acc: r4(0.93 - 0.5 / e as f64),
                test_acc: r4(0.91 - 0.47 / e as f64 - start / 100.0),
                train_secs: 12.5 * e as f64,
                images_per_sec: 800.0,
                terms: BTreeMap::new(),
                peak_memory_bytes: Some(900 << 20),
                devices: vec!["cuda".into()],
            })
            .collect(),
    };
    Summary {
        preset: "sample".into(),
        seed: 7,
        git: "0123abc (synthetic sample)".into(),
        command: "eio::report::sample::sample_summary()".into(),
        loaded: Vec::new(),
        images: 1000,
        eps_whitebox,
        eps_blackbox,
        whitebox_attack: "PGD-50, step eps/5, 5 restarts, CE (synthetic)".into(),
        blackbox_protocol: "transfer from baseline ensembles of 3/5/8, 30 versions (synthetic)"
            .into(),
        models,
        transferability: vec![matrix("baseline/3", 0.6131), matrix("EIO/3 paths", 0.2417)],
        stability: Some(stability),
        training: vec![
            curve("baseline", "baseline", 1.83),
            curve("rgn-warmup", "rgn", 2.07),
            curve("eio", "eio", 3.41),
        ],
    }
}
