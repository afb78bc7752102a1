//! The observer hook (`model::Observer`): tools read named intermediates of the one forward
//! body instead of keeping their own copy of it. Checks that every layer reports every name in
//! data-flow order, that the last `l_out` row is the state's hidden state, and that a prefill
//! block reports, row for row and bit for bit, what token-by-token decode reports.

use edgelora::lora::AdapterSet;
use edgelora::model::{state_buffer, Model, Observer, State};
use edgelora::Gguf;

const NAMES: [&str; 11] = [
    "attn_norm",
    "q",
    "k",
    "v",
    "attn_out",
    "attn_proj",
    "ffn_inp",
    "ffn_norm",
    "ffn_act",
    "ffn_out",
    "l_out",
];

/// Every (name, layer, position) -> row, recorded.
#[derive(Default)]
struct Record {
    order: Vec<(String, Option<usize>)>,
    rows: Vec<(String, Option<usize>, usize, Vec<u32>)>,
}

impl Observer for Record {
    fn tensor(&mut self, name: &str, layer: Option<usize>, pos0: usize, n: usize, data: &[f32]) {
        self.order.push((name.to_string(), layer));
        let w = data.len() / n.max(1);
        for (i, row) in data.chunks_exact(w.max(1)).take(n).enumerate() {
            self.rows.push((
                name.to_string(),
                layer,
                pos0 + i,
                row.iter().map(|v| v.to_bits()).collect(),
            ));
        }
    }
}

#[test]
fn observer_sees_every_intermediate_and_prefill_equals_decode() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/tiny/tiny-base.gguf"
    ))
    .unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let cfg = *model.config();
    let toks: Vec<u32> = (0..21u32)
        .map(|i| (i * 37 + 5) % cfg.vocab as u32)
        .collect();

    // Token by token.
    let mut buf = state_buffer(&cfg, 64);
    let mut st = State::new(&cfg, 64, &mut buf).unwrap();
    let mut dec = Record::default();
    for (p, &t) in toks.iter().enumerate() {
        model
            .forward_observed(t, p, &mut st, &AdapterSet::EMPTY, &mut dec)
            .unwrap();
    }
    let hidden: Vec<u32> = st.hidden().iter().map(|v| v.to_bits()).collect();
    // Per step: inp_embd, NAMES for every layer, result_norm.
    let per_step = 2 + NAMES.len() * cfg.n_layers;
    assert_eq!(dec.order.len(), per_step * toks.len());
    assert_eq!(dec.order[0], ("inp_embd".to_string(), None));
    for l in 0..cfg.n_layers {
        for (j, name) in NAMES.iter().enumerate() {
            assert_eq!(
                dec.order[1 + l * NAMES.len() + j],
                (name.to_string(), Some(l))
            );
        }
    }
    assert_eq!(dec.order[per_step - 1], ("result_norm".to_string(), None));
    let last_l_out = dec.rows.iter().rev().find(|r| r.0 == "l_out").unwrap();
    assert_eq!(last_l_out.1, Some(cfg.n_layers - 1));
    assert_eq!(last_l_out.2, toks.len() - 1);
    assert_eq!(
        last_l_out.3, hidden,
        "the last l_out row is the hidden state"
    );

    // One prefill: the same rows (prefill runs blocks of several tokens on hosts).
    let mut buf = state_buffer(&cfg, 64);
    let mut st = State::new(&cfg, 64, &mut buf).unwrap();
    let mut pre = Record::default();
    model
        .prefill_observed(&toks, 0, &mut st, &AdapterSet::EMPTY, &mut pre)
        .unwrap();
    let key = |r: &(String, Option<usize>, usize, Vec<u32>)| (r.0.clone(), r.1, r.2);
    let mut want: Vec<_> = dec.rows.iter().filter(|r| r.0 != "result_norm").collect();
    let mut got: Vec<_> = pre.rows.iter().filter(|r| r.0 != "result_norm").collect();
    want.sort_by_key(|r| key(r));
    got.sort_by_key(|r| key(r));
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(&want) {
        assert_eq!(key(a), key(b));
        assert_eq!(
            a.3, b.3,
            "{} layer {:?} pos {}: prefill differs from decode",
            a.0, a.1, a.2
        );
    }
    println!(
        "observer: {} named rows per run, prefill == decode on all of them",
        got.len()
    );
}
