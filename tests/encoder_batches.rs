//! Batches of encoded windows: a batch larger than the encoder's part size is
//! encoded in parts and put together (each window's cross-attention K/V must
//! be what encoding it alone gives, in the batch's order), and windows are
//! arranged for the decoder in place, without losing any. Models loaded from
//! one folder share their weights.

mod common;

use common::{model_options, model_ready, root};
use mmt_whisper::audio::decode_file;
use mmt_whisper::mel::{window, MelFrontEnd};
use mmt_whisper::model::CrossAttention;
use mmt_whisper::model::{stack_windows, WhisperModel, ENCODER_ROWS};
use ndarray::{Array2, ArrayD, Axis};
use std::sync::Arc;

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

/// Each window's K/V of the first decoder layer, by position along axis 0.
fn first_layer_keys(cross: &CrossAttention) -> Vec<ArrayD<f32>> {
    let keys = cross.keys[0].try_extract_array::<f32>().expect("f32");
    keys.axis_iter(Axis(0)).map(|row| row.to_owned()).collect()
}

/// A model and `count` windows it encoded in one batch, when the model is set up.
fn encoded(count: usize) -> Option<(WhisperModel, CrossAttention)> {
    if !model_ready() {
        return None;
    }
    let mut model = WhisperModel::load(&model_options(2)).expect("model loads");
    let cross = model
        .encode(stack_windows(&windows(count)).expect("stack").view())
        .expect("batch encodes");
    Some((model, cross))
}

#[test]
fn arranging_windows_brings_them_to_the_front_and_keeps_the_others() {
    let Some((_model, mut cross)) = encoded(3) else {
        return;
    };
    let encoded = first_layer_keys(&cross);
    assert_ne!(encoded[0], encoded[1], "the windows hold different audio");

    cross.arrange(&[2, 0]).expect("arranged");
    assert_eq!(cross.active(), 2);
    let arranged = first_layer_keys(&cross);
    assert_eq!(arranged[0], encoded[2]);
    assert_eq!(arranged[1], encoded[0]);
    assert_eq!(arranged[2], encoded[1], "the window left out keeps its K/V");

    // Windows are still named as encoded.
    let copy = cross.select_rows(&[1, 1]).expect("selected");
    assert_eq!(
        first_layer_keys(&copy),
        vec![encoded[1].clone(), encoded[1].clone()]
    );
    cross.arrange(&[0, 1, 2]).expect("arranged back");
    assert_eq!(cross.active(), 3);
    assert_eq!(first_layer_keys(&cross), encoded);

    assert!(cross.arrange(&[1, 1]).is_err(), "a window twice");
    assert!(cross.arrange(&[3]).is_err(), "a window not in the batch");
}

/// A fallback keeps only the windows it decodes again: their K/V, named as
/// encoded, and nothing of the others.
#[test]
fn retaining_windows_keeps_only_theirs_named_as_encoded() {
    let Some((_model, mut cross)) = encoded(4) else {
        return;
    };
    let encoded = first_layer_keys(&cross);
    cross.arrange(&[3, 1]).expect("arranged");

    cross.retain(&[2, 3]).expect("retained");
    assert_eq!((cross.rows, cross.active()), (2, 2));
    assert_eq!(
        first_layer_keys(&cross),
        vec![encoded[2].clone(), encoded[3].clone()]
    );
    assert_eq!(
        cross.values[0]
            .try_extract_array::<f32>()
            .expect("f32")
            .shape()[0],
        2
    );
    cross.arrange(&[3]).expect("arranged by the encoded name");
    assert_eq!(first_layer_keys(&cross)[0], encoded[3]);

    assert!(cross.retain(&[1]).is_err(), "a window no longer held");
    assert!(cross.retain(&[3, 3]).is_err(), "a window twice");
    assert!(
        cross.read_only(Some(1..2)).is_err(),
        "past the one active window"
    );
}

#[test]
fn models_loaded_from_one_folder_share_their_weights() {
    if !model_ready() {
        return;
    }
    let first = WhisperModel::load(&model_options(1)).expect("model loads");
    let second = WhisperModel::load(&model_options(1)).expect("model loads");
    assert!(Arc::ptr_eq(first.weights(), second.weights()));
    assert!(first.weights().decoder.bytes() > 0);
}
