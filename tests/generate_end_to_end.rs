//! Text + image in, text out, against transformers' `processor` + `model.generate` on the tiny
//! checkpoints (fixtures from `scripts/reference/processor_fixtures.py`), through the library
//! call and the `vlmtune generate` command.

mod common;

use common::{fixture_path, B};
use vlmtune::data::processor::open_image;
use vlmtune::{ChatOptions, Pipeline};

fn generations(kind: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture_path(&format!("processor/{kind}.json"))).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["generations"].as_array().unwrap().clone()
}

#[test]
fn chat_generation_matches_transformers() {
    for kind in ["smolvlm", "idefics3"] {
        let dir = fixture_path(&format!("tiny-{kind}"));
        let pipeline = Pipeline::<B>::load(dir.to_str().unwrap(), &Default::default()).unwrap();
        for g in generations(kind) {
            let image = open_image(&fixture_path(&format!(
                "processor/images/{}",
                g["image"].as_str().unwrap()
            )))
            .unwrap();
            let options = ChatOptions {
                max_new_tokens: 12,
                do_image_splitting: Some(g["split"].as_bool().unwrap()),
                ..Default::default()
            };
            let reply = pipeline
                .chat(&[image], g["prompt"].as_str().unwrap(), &options)
                .unwrap();
            let want_ids: Vec<u32> = serde_json::from_value(g["new_tokens"].clone()).unwrap();
            assert_eq!(reply.token_ids, want_ids, "{kind} {}", g["image"]);
            assert_eq!(
                reply.text,
                g["text"].as_str().unwrap(),
                "{kind} {}",
                g["image"]
            );
        }
    }
}

#[test]
fn cli_prints_only_the_generated_text() {
    let g = &generations("smolvlm")[0];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vlmtune"))
        .args(["generate", "--model"])
        .arg(fixture_path("tiny-smolvlm"))
        .arg("--image")
        .arg(fixture_path(&format!(
            "processor/images/{}",
            g["image"].as_str().unwrap()
        )))
        .args([
            "--prompt",
            g["prompt"].as_str().unwrap(),
            "--max-new-tokens",
            "12",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", g["text"].as_str().unwrap())
    );
}
