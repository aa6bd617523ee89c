//! Seeded synthetic charts with exactly known answers, so SFT and DPO run (and can be judged)
//! with no network: bar charts (which bar is highest / lowest, how many bars, the value of a
//! coloured bar) and line charts (does the line go up or down, its highest value).

use std::sync::Arc;

use image::{DynamicImage, Rgb, RgbImage};
use rand::{RngExt, SeedableRng};

use crate::dataset::{Conversation, ImageSource, PreferenceExample, SftExample};
use crate::processor::Message;

/// Bar colours and their names.
pub const PALETTE: [(&str, [u8; 3]); 5] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("orange", [250, 150, 30]),
    ("purple", [150, 60, 190]),
];

/// The kind of question, for per-kind accuracy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuestionKind {
    /// Colour of the highest bar.
    Highest,
    /// Colour of the lowest bar.
    Lowest,
    /// Number of bars.
    Count,
    /// Value of a named bar.
    Value,
    /// Line trend (up/down).
    Trend,
    /// Highest value of the line.
    LineMax,
}

/// One generated chart with its question and answer.
#[derive(Clone, Debug)]
pub struct ChartSample {
    /// The picture.
    pub image: RgbImage,
    /// The question.
    pub question: String,
    /// The exact answer.
    pub answer: String,
    /// A wrong but plausible answer (for preference pairs).
    pub wrong_answer: String,
    /// What is asked.
    pub kind: QuestionKind,
}

/// Values are integers 1..=9 on a grid of 9 units.
const MAX_VALUE: u32 = 9;

struct Canvas {
    img: RgbImage,
    size: u32,
}

impl Canvas {
    fn new(size: u32) -> Self {
        Self {
            img: RgbImage::from_pixel(size, size, Rgb([255, 255, 255])),
            size,
        }
    }
    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: [u8; 3]) {
        for y in y0.max(0)..y1.min(self.size as i64) {
            for x in x0.max(0)..x1.min(self.size as i64) {
                self.img.put_pixel(x as u32, y as u32, Rgb(color));
            }
        }
    }
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: [u8; 3]) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()) * 2.0).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.rect(x as i64, y as i64, x as i64 + 2, y as i64 + 2, color);
        }
    }
}

/// Plot geometry shared by both chart types.
struct Plot {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Plot {
    fn new(size: u32) -> Self {
        let s = f64::from(size);
        Self {
            left: s * 0.12,
            right: s * 0.95,
            top: s * 0.06,
            bottom: s * 0.9,
        }
    }
    fn y_of(&self, value: f64) -> f64 {
        self.bottom - (self.bottom - self.top) * value / f64::from(MAX_VALUE)
    }
    fn axes(&self, c: &mut Canvas) {
        for v in 1..=MAX_VALUE {
            let y = self.y_of(f64::from(v)) as i64;
            c.rect(
                self.left as i64,
                y,
                self.right as i64,
                y + 1,
                [225, 225, 225],
            );
        }
        c.rect(
            self.left as i64 - 1,
            self.top as i64,
            self.left as i64 + 1,
            self.bottom as i64 + 1,
            [0, 0, 0],
        );
        c.rect(
            self.left as i64 - 1,
            self.bottom as i64,
            self.right as i64,
            self.bottom as i64 + 2,
            [0, 0, 0],
        );
    }
}

fn bar_chart(rng: &mut rand::rngs::StdRng, size: u32) -> ChartSample {
    let n = rng.random_range(2..=5usize);
    let mut colors: Vec<usize> = (0..PALETTE.len()).collect();
    for i in (1..colors.len()).rev() {
        colors.swap(i, rng.random_range(0..=i));
    }
    colors.truncate(n);
    // Distinct values keep "highest" and "lowest" unambiguous.
    let mut pool: Vec<u32> = (1..=MAX_VALUE).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, rng.random_range(0..=i));
    }
    let values: Vec<u32> = pool[..n].to_vec();
    let plot = Plot::new(size);
    let mut c = Canvas::new(size);
    plot.axes(&mut c);
    let slot = (plot.right - plot.left) / n as f64;
    for (i, (&color, &value)) in colors.iter().zip(&values).enumerate() {
        let x0 = plot.left + slot * (i as f64 + 0.1);
        let x1 = plot.left + slot * (i as f64 + 0.9);
        c.rect(
            x0 as i64,
            plot.y_of(f64::from(value)) as i64,
            x1 as i64,
            plot.bottom as i64,
            PALETTE[color].1,
        );
    }
    let name = |i: usize| PALETTE[colors[i]].0.to_string();
    let argmax = (0..n).max_by_key(|i| values[*i]).unwrap_or(0);
    let argmin = (0..n).min_by_key(|i| values[*i]).unwrap_or(0);
    let other = |not: usize| (0..n).find(|i| *i != not).unwrap_or(0);
    let (kind, question, answer, wrong) = match rng.random_range(0..4u32) {
        0 => (
            QuestionKind::Highest,
            "Which bar is the highest?".to_string(),
            name(argmax),
            name(other(argmax)),
        ),
        1 => (
            QuestionKind::Lowest,
            "Which bar is the lowest?".to_string(),
            name(argmin),
            name(other(argmin)),
        ),
        2 => (
            QuestionKind::Count,
            "How many bars are there?".to_string(),
            n.to_string(),
            (if n == 5 { 4 } else { n + 1 }).to_string(),
        ),
        _ => {
            let i = rng.random_range(0..n);
            let v = values[i];
            (
                QuestionKind::Value,
                format!("What is the value of the {} bar?", name(i)),
                v.to_string(),
                near_miss(v),
            )
        }
    };
    ChartSample {
        image: c.img,
        question,
        answer,
        wrong_answer: wrong,
        kind,
    }
}

/// A wrong value next to `v` (the rejected answer of value questions).
fn near_miss(v: u32) -> String {
    (if v == MAX_VALUE { v - 1 } else { v + 1 }).to_string()
}

fn line_chart(rng: &mut rand::rngs::StdRng, size: u32) -> ChartSample {
    let n = rng.random_range(4..=6usize);
    let mut values: Vec<u32> = (0..n).map(|_| rng.random_range(1..=MAX_VALUE)).collect();
    if values[0] == values[n - 1] {
        values[n - 1] = if values[0] == MAX_VALUE { 1 } else { MAX_VALUE };
    }
    let plot = Plot::new(size);
    let mut c = Canvas::new(size);
    plot.axes(&mut c);
    let x_of =
        |i: usize| plot.left + 2.0 + (plot.right - plot.left - 4.0) * i as f64 / (n - 1) as f64;
    for i in 1..n {
        c.line(
            (x_of(i - 1), plot.y_of(f64::from(values[i - 1]))),
            (x_of(i), plot.y_of(f64::from(values[i]))),
            [30, 60, 200],
        );
    }
    let max = *values.iter().max().unwrap_or(&1);
    let up = values[n - 1] > values[0];
    let (kind, question, answer, wrong) = if rng.random_bool(0.5) {
        (
            QuestionKind::Trend,
            "Does the line go up or down?".to_string(),
            if up { "up" } else { "down" }.to_string(),
            if up { "down" } else { "up" }.to_string(),
        )
    } else {
        (
            QuestionKind::LineMax,
            "What is the highest value in the line chart?".to_string(),
            max.to_string(),
            near_miss(max),
        )
    };
    ChartSample {
        image: c.img,
        question,
        answer,
        wrong_answer: wrong,
        kind,
    }
}

/// Expected accuracy of answering each question at random among its possible answers
/// (bars: 2-5 colours, counts 2-5, values 1-9; lines: up/down, values 1-9), for the mix of
/// questions [`chart`] generates: about 0.27.
pub fn chance_accuracy() -> f64 {
    let one_of_bars = (2..=5).map(|n| 1.0 / f64::from(n)).sum::<f64>() / 4.0;
    let bars = (one_of_bars * 2.0 + 0.25 + 1.0 / 9.0) / 4.0;
    let lines = (0.5 + 1.0 / 9.0) / 2.0;
    0.7 * bars + 0.3 * lines
}

/// Chart number `index` of the stream seeded by `seed` (independent of other indices).
pub fn chart(seed: u64, index: u64, size: u32) -> ChartSample {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index);
    if rng.random_bool(0.7) {
        bar_chart(&mut rng, size)
    } else {
        line_chart(&mut rng, size)
    }
}

fn prompt(sample: &ChartSample) -> Vec<Message> {
    vec![Message::user_with_images(1, &sample.question)]
}

fn image(sample: &ChartSample) -> ImageSource {
    ImageSource::Image(Arc::new(DynamicImage::ImageRgb8(sample.image.clone())))
}

/// `n` prompt/completion examples (indices `start..start+n`), each one chart, one question.
pub fn sft_examples(seed: u64, start: u64, n: usize, size: u32) -> Vec<(SftExample, ChartSample)> {
    (start..start + n as u64)
        .map(|i| {
            let s = chart(seed, i, size);
            let ex = SftExample {
                images: vec![image(&s)],
                conversation: Conversation::PromptCompletion {
                    prompt: prompt(&s),
                    completion: vec![Message::text("assistant", &s.answer)],
                },
                origin: format!("synthetic-charts:{i}"),
            };
            (ex, s)
        })
        .collect()
}

/// `n` preference pairs: chosen = the right answer, rejected = a plausible wrong one.
pub fn preference_examples(seed: u64, start: u64, n: usize, size: u32) -> Vec<PreferenceExample> {
    (start..start + n as u64)
        .map(|i| {
            let s = chart(seed, i, size);
            PreferenceExample {
                images: vec![image(&s)],
                prompt: prompt(&s),
                chosen: vec![Message::text("assistant", &s.answer)],
                rejected: vec![Message::text("assistant", &s.wrong_answer)],
                origin: format!("synthetic-charts:{i}"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_seeded_and_answers_consistent() {
        let a = chart(1, 5, 64);
        let b = chart(1, 5, 64);
        assert_eq!(a.image, b.image);
        assert_eq!(a.question, b.question);
        assert_ne!(chart(2, 5, 64).image, a.image);
        for i in 0..200 {
            let s = chart(3, i, 64);
            assert_ne!(s.answer, s.wrong_answer, "{s:?}");
            if s.kind == QuestionKind::Highest {
                assert!(PALETTE.iter().any(|(n, _)| *n == s.answer));
            }
        }
    }

    #[test]
    fn chance_level() {
        assert!(
            (chance_accuracy() - 0.267_15).abs() < 1e-4,
            "{}",
            chance_accuracy()
        );
    }

    #[test]
    fn highest_bar_colour_is_in_the_picture() {
        for i in 0..50 {
            let s = chart(7, i, 64);
            if s.kind == QuestionKind::Highest {
                let rgb = PALETTE.iter().find(|(n, _)| *n == s.answer).unwrap().1;
                // The highest bar reaches the highest painted row of any palette colour.
                let top_of = |c: [u8; 3]| {
                    s.image
                        .enumerate_pixels()
                        .filter(|(_, _, p)| p.0 == c)
                        .map(|(_, y, _)| y)
                        .min()
                };
                let top = top_of(rgb).unwrap();
                assert!(PALETTE
                    .iter()
                    .filter_map(|(_, c)| top_of(*c))
                    .all(|t| t >= top));
            }
        }
    }
}
