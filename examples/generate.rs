//! Answer a question about an image through the library API.
//!
//! ```sh
//! cargo run --release --example generate -- tests/fixtures/tiny-smolvlm \
//!     tests/fixtures/processor/images/landscape.png "What is the highest bar?"
//! ```
//! (any SmolVLM folder or Hub id works in place of the tiny test checkpoint).

vlmtune::use_retaining_allocator!();

use vlmtune::data::processor::open_image;
use vlmtune::{ChatOptions, Pipeline};

type B = burn::backend::Flex;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, image, prompt] = args.as_slice() else {
        eprintln!("usage: generate <model dir or hub id> <image> <prompt>");
        std::process::exit(2);
    };
    let pipeline = Pipeline::<B>::load(model, &Default::default())?;
    let reply = pipeline.chat(
        &[open_image(image.as_ref())?],
        prompt,
        &ChatOptions::default(),
    )?;
    println!("{}", reply.text);
    Ok(())
}
