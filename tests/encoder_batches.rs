//! A batch larger than the encoder's part size is encoded in parts and put
//! together: each window's cross-attention K/V must be what encoding it alone
//! gives, in the batch's order.

mod common;

use common::{model_options, model_ready, root};
use mmt_whisper::audio::decode_file;
use mmt_whisper::mel::{window, MelFrontEnd};
use mmt_whisper::model::{stack_windows, WhisperModel, ENCODER_ROWS};
use ndarray::{Array2, Axis};

fn windows(count: usize) -> Vec<Array2<f32>> {
    let samples = decode_file(&root().join("samples/jfk_inaugural_1961_excerpt.wav"))
        .expect("sample decodes");
    let front_end = MelFrontEnd::new(80);
    // Different audio per window: a different stretch of the clip each.
    (0..count)
        .map(|i| {
            let start = (i * 8_000).min(samples.len() / 2);
            window(&front_end.log_mel(&samples[start..]), 0)
        })
        .collect()
}

#[test]
fn a_batch_encoded_in_parts_matches_its_windows_encoded_alone() {
    if !model_ready() {
        return;
    }
    let mut model = WhisperModel::load(&model_options(2)).expect("model loads");
    let count = ENCODER_ROWS + 1;
    let windows = windows(count);
    let batch = model
        .encode(stack_windows(&windows).expect("stack").view())
        .expect("batch encodes");
    assert_eq!(batch.rows, count);
    for (row, single) in windows.iter().enumerate() {
        let alone = model
            .encode(single.view().insert_axis(Axis(0)))
            .expect("window encodes");
        for (whole, part) in batch
            .keys
            .iter()
            .zip(&alone.keys)
            .chain(batch.values.iter().zip(&alone.values))
        {
            let whole = whole.try_extract_array::<f32>().expect("f32");
            let part = part.try_extract_array::<f32>().expect("f32");
            let got = whole.index_axis(Axis(0), row);
            let want = part.index_axis(Axis(0), 0);
            let worst = got
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-3, "window {row} differs by {worst}");
        }
    }
}
