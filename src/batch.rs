//! Which questions each step sees, and how they become padded tensors.
//!
//! The order follows PyTorch's DistributedSampler: one permutation per epoch from
//! `seed + epoch`, identical on every rank; padded (by repeating from the start) or cut to a
//! multiple of the world size; rank `r` takes positions `r, r + world, ...`. With
//! `group_by_length` the permutation is arranged as the HF Trainer's LengthGroupedSampler
//! does: shuffled, cut into mega-batches of 50 batches, each sorted longest first, and the
//! mega-batch holding the longest question moved to the front (memory errors show at once).
//!
//! The order depends on the seed and epoch alone, so optimizer step `k` of an epoch takes its
//! positions `[k G, (k + 1) G)` whatever the number of processes, G being the global batch:
//! a run can be resharded at a step boundary onto another number of processes.

use crate::data::CHOICES;
use crate::encode::Sequences;
use crate::error::{Error, Result};
use crate::model::ChoiceBatch;
use crate::prep::cache::PreparedCache;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::Tensor;

/// One position in a rank's shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub index: usize,
    /// A repeat added to make the shards equal; evaluation must not count it.
    pub padding: bool,
}

#[derive(Clone, Debug)]
pub struct Sampler {
    pub len: usize,
    pub world_size: usize,
    pub rank: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
    /// Arrange by these per-question lengths in mega-batches of 50 x this many questions (the
    /// HF Trainer's per-process batch times accumulation: independent of the world size).
    pub group_by_length: Option<(Vec<u32>, usize)>,
}

impl Sampler {
    /// Samples per rank in an epoch sharded from position `from` of its global order.
    pub fn num_samples(&self, from: usize) -> usize {
        let left = self.len.saturating_sub(from);
        if self.drop_last {
            left / self.world_size
        } else {
            left.div_ceil(self.world_size)
        }
    }

    /// The global order of an epoch, before sharding.
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if !self.shuffle {
            return order;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(epoch));
        order.shuffle(&mut rng);
        if let Some((lengths, batch_size)) = &self.group_by_length {
            let mega = (50 * batch_size).max(1);
            let mut chunks: Vec<Vec<usize>> = order
                .chunks(mega)
                .map(|c| {
                    let mut c = c.to_vec();
                    c.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
                    c
                })
                .collect();
            let longest = chunks.iter().enumerate().max_by_key(|(_, c)| c.first().map(|&i| lengths[i])).map(|(k, _)| k);
            if let Some(k) = longest {
                chunks.swap(0, k);
            }
            order = chunks.concat();
        }
        order
    }

    /// This rank's samples of `epoch`, in order, sharded from position `from` of the epoch's
    /// global order (0 but for a run resumed mid-epoch by another number of processes). The
    /// padding repeats the epoch's order from its start, wherever the sharding began, so a run
    /// resharded at a step boundary pads as the uninterrupted run does.
    pub fn shard(&self, epoch: u64, from: usize) -> Vec<Sample> {
        let total = self.num_samples(from) * self.world_size;
        let order = self.order(epoch);
        let rest = order.get(from..).unwrap_or_default();
        let padded: Vec<Sample> = rest
            .iter()
            .map(|&index| Sample { index, padding: false })
            .chain(order.iter().cycle().map(|&index| Sample { index, padding: true }))
            .take(if order.is_empty() { 0 } else { total })
            .collect();
        padded.into_iter().skip(self.rank).step_by(self.world_size).collect()
    }
}

/// Per-question padded length (the longest of its sequences), for `group_by_length`.
pub fn question_lengths(cache: &PreparedCache) -> Result<Vec<u32>> {
    let offsets = cache.offsets()?;
    Ok((0..cache.len())
        .map(|q| {
            (0..CHOICES).map(|c| (offsets[q * CHOICES + c + 1] - offsets[q * CHOICES + c]) as u32).max().unwrap_or(0)
        })
        .collect())
}

/// A borrowed view of `Sequences` (a cache's memory-mapped arrays, or freshly encoded ones).
pub struct Tokens<'a> {
    pub input_ids: &'a [i32],
    pub token_type_ids: &'a [u8],
    pub offsets: &'a [i64],
}

impl<'a> From<&'a Sequences> for Tokens<'a> {
    fn from(s: &'a Sequences) -> Self {
        Tokens { input_ids: &s.input_ids, token_type_ids: &s.token_type_ids, offsets: &s.offsets }
    }
}

/// Every question of freshly encoded `Sequences` as one batch (see `pad`).
pub fn pad_all(sequences: &Sequences) -> ChoiceBatch {
    let questions: Vec<usize> = (0..sequences.offsets.len().saturating_sub(1) / CHOICES).collect();
    pad(&sequences.into(), &questions, 0)
}

/// Questions `questions` (each `CHOICES` consecutive sequences) as one batch of shape
/// [questions, CHOICES, max(longest, min_len)], padded with 0 and masked, on the CPU (the
/// model moves it to its device).
pub fn pad(tokens: &Tokens, questions: &[usize], min_len: usize) -> ChoiceBatch {
    let choices = CHOICES;
    let span = |s: usize| tokens.offsets[s] as usize..tokens.offsets[s + 1] as usize;
    let sequences = || questions.iter().flat_map(move |&q| (0..choices).map(move |c| q * choices + c));
    let seq = sequences().map(|s| span(s).len()).max().unwrap_or(0).max(min_len);
    let size = questions.len() * choices * seq;
    let (mut input_ids, mut mask, mut type_ids) = (vec![0i64; size], vec![0i64; size], vec![0i64; size]);
    for (row, s) in sequences().enumerate() {
        for (k, t) in span(s).enumerate() {
            input_ids[row * seq + k] = i64::from(tokens.input_ids[t]);
            type_ids[row * seq + k] = i64::from(tokens.token_type_ids[t]);
            mask[row * seq + k] = 1;
        }
    }
    let shape = [questions.len() as i64, choices as i64, seq as i64];
    let tensor = |v: &[i64]| Tensor::from_slice(v).view(shape);
    ChoiceBatch { input_ids: tensor(&input_ids), attention_mask: tensor(&mask), token_type_ids: tensor(&type_ids) }
}

/// `--fixed-shapes`: every training micro-batch laid out as the same number of questions of
/// the same length, whose real tokens (those the packed layers compute on) number one of a
/// short ladder of sizes, so that the allocator and the kernels (and CUDA graphs, which replay
/// fixed shapes) see a handful of shapes. Dummy questions fill a short batch and filler
/// questions bring the tokens up to the size; both are labelled -100, so the loss and the
/// gradients never see them, and attention keeps every sequence apart, so the real questions'
/// logits do not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedShapes {
    /// Questions of a full micro-batch (`--per-device-train-batch-size`).
    pub questions: usize,
    /// Filler questions after them: enough for a gap of one rung of the ladder.
    pub fillers: usize,
    /// Tokens of every sequence slot (`--max-length`).
    pub length: usize,
}

/// Rungs of the token ladder per doubling: a size wastes at most 1/8 of it.
const RUNGS_PER_OCTAVE: usize = 8;

impl FixedShapes {
    pub fn new(questions: usize, length: usize) -> FixedShapes {
        // A rung above T is at most T/8 + 1 tokens away; T <= questions * CHOICES * length.
        let gap = questions * CHOICES * length / RUNGS_PER_OCTAVE + 1;
        FixedShapes { questions, fillers: gap.div_ceil(CHOICES * length.max(1)) + 1, length }
    }

    /// The smallest size of the ladder (multiples of 2^(k-3) between 2^k and 2^(k+1)) that
    /// holds `tokens`.
    pub fn token_size(tokens: usize) -> usize {
        if tokens <= RUNGS_PER_OCTAVE {
            return tokens;
        }
        let octave = usize::BITS - 1 - tokens.leading_zeros();
        let rung = 1usize << (octave - RUNGS_PER_OCTAVE.trailing_zeros());
        tokens.div_ceil(rung) * rung
    }

    /// `batch` and `labels` (from `collate`) laid out in this shape: [questions + fillers,
    /// CHOICES, length], the real tokens and the extra questions' tokens (each of their
    /// sequences at least one token, so its attention is defined) summing to a ladder size.
    pub fn apply(&self, batch: &ChoiceBatch, labels: &Tensor) -> Result<(ChoiceBatch, Tensor)> {
        let size = batch.input_ids.size();
        let (questions, seq) = (size[0] as usize, size[2] as usize);
        if questions > self.questions || seq > self.length {
            return Err(Error::Batch(format!(
                "a batch of {questions} questions of {seq} tokens does not fit --fixed-shapes {} x {}",
                self.questions, self.length
            )));
        }
        let extra = self.questions + self.fillers - questions;
        let real = batch.attention_mask.sum(tch::Kind::Int64).int64_value(&[]) as usize;
        let slots = extra * CHOICES;
        let target = Self::token_size(real + slots).min(real + slots * self.length);
        // One token for every extra sequence, then the rest of the gap, slot by slot.
        let mut left = target - real - slots;
        let mask: Vec<i64> = (0..slots)
            .flat_map(|_| {
                let more = left.min(self.length - 1);
                left -= more;
                (0..self.length).map(move |k| i64::from(k <= more))
            })
            .collect();
        let dims = [extra as i64, CHOICES as i64, self.length as i64];
        let widen = |t: &Tensor| t.constant_pad_nd([0, (self.length - seq) as i64]);
        let extra_mask = Tensor::from_slice(&mask).view(dims);
        let batch = ChoiceBatch {
            input_ids: Tensor::cat(&[widen(&batch.input_ids), extra_mask.zeros_like()], 0),
            attention_mask: Tensor::cat(&[widen(&batch.attention_mask), extra_mask], 0),
            token_type_ids: Tensor::cat(
                &[widen(&batch.token_type_ids), Tensor::zeros(dims, (tch::Kind::Int64, tch::Device::Cpu))],
                0,
            ),
        };
        let labels = Tensor::cat(
            &[labels.shallow_clone(), Tensor::full([extra as i64], -100, (labels.kind(), labels.device()))],
            0,
        );
        Ok((batch, labels))
    }
}

/// Cached questions `indices` as one batch padded to its longest sequence, with their labels
/// (-1 where unlabelled), on the CPU.
pub fn collate(cache: &PreparedCache, indices: &[usize]) -> Result<(ChoiceBatch, Tensor)> {
    collate_to(cache, indices, 0)
}

/// As `collate`, padded to at least `min_len` tokens (the cache's max length gives every batch
/// one shape, as `--pad-to-max-length` asks).
pub fn collate_to(cache: &PreparedCache, indices: &[usize], min_len: usize) -> Result<(ChoiceBatch, Tensor)> {
    if let Some(&bad) = indices.iter().find(|&&q| q >= cache.len()) {
        return Err(Error::Batch(format!("question {bad} is beyond the cache's {} questions", cache.len())));
    }
    let tokens =
        Tokens { input_ids: cache.input_ids()?, token_type_ids: cache.token_type_ids()?, offsets: cache.offsets()? };
    let labels = cache.labels()?;
    let labels: Vec<i64> = indices.iter().map(|&q| labels[q]).collect();
    Ok((pad(&tokens, indices, min_len), Tensor::from_slice(&labels)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(len: usize, world: usize, rank: usize, drop_last: bool) -> Sampler {
        Sampler { len, world_size: world, rank, shuffle: true, seed: 42, drop_last, group_by_length: None }
    }

    #[test]
    fn shards_are_disjoint_cover_everything_and_pad_like_torch() {
        for world in 1..=4 {
            let shards: Vec<Vec<Sample>> = (0..world).map(|r| sampler(10, world, r, false).shard(3, 0)).collect();
            let n = 10usize.div_ceil(world);
            assert!(shards.iter().all(|s| s.len() == n), "world {world}: unequal shards");
            let mut real: Vec<usize> = shards.iter().flatten().filter(|s| !s.padding).map(|s| s.index).collect();
            real.sort();
            assert_eq!(real, (0..10).collect::<Vec<_>>(), "world {world}");
            assert_eq!(shards.iter().flatten().filter(|s| s.padding).count(), n * world - 10);
        }
    }

    #[test]
    fn drop_last_cuts_to_a_multiple_of_the_world() {
        let shards: Vec<Vec<Sample>> = (0..3).map(|r| sampler(10, 3, r, true).shard(0, 0)).collect();
        assert!(shards.iter().all(|s| s.len() == 3 && s.iter().all(|x| !x.padding)));
    }

    #[test]
    fn the_order_depends_on_seed_and_epoch_only() {
        let a = sampler(100, 2, 1, false);
        assert_eq!(a.shard(5, 0), a.clone().shard(5, 0));
        assert_ne!(a.shard(5, 0), a.shard(6, 0));
        let unshuffled = Sampler { shuffle: false, ..sampler(5, 2, 1, false) };
        assert_eq!(unshuffled.shard(9, 0).iter().map(|s| s.index).collect::<Vec<_>>(), [1, 3, 0]);
    }

    #[test]
    fn resharding_at_a_step_boundary_continues_the_epoch() {
        for (len, world, per_rank) in [(10, 2, 2), (11, 3, 1), (64, 4, 3)] {
            let whole: Vec<Vec<Sample>> = (0..world).map(|r| sampler(len, world, r, false).shard(2, 0)).collect();
            for steps in 0..len / (world * per_rank) {
                let from = steps * world * per_rank;
                for (r, shard) in whole.iter().enumerate() {
                    // The same number of processes: exactly the rest of the uninterrupted shard.
                    assert_eq!(sampler(len, world, r, false).shard(2, from), shard[steps * per_rank..]);
                }
                for other in 1..=4 {
                    let mut rest: Vec<usize> = (0..other)
                        .flat_map(|r| sampler(len, other, r, false).shard(2, from))
                        .filter(|s| !s.padding)
                        .map(|s| s.index)
                        .collect();
                    let mut done: Vec<usize> =
                        whole.iter().flat_map(|s| &s[..steps * per_rank]).map(|s| s.index).collect();
                    done.append(&mut rest);
                    done.sort();
                    assert_eq!(done, (0..len).collect::<Vec<_>>(), "{len} questions, {world} -> {other} processes");
                }
            }
        }
    }

    #[test]
    fn group_by_length_sorts_mega_batches_and_leads_with_the_longest() {
        let lengths: Vec<u32> = (0..1000).map(|i| (i * 7919 % 997) as u32).collect();
        let s = Sampler { group_by_length: Some((lengths.clone(), 2)), ..sampler(1000, 1, 0, false) };
        let order: Vec<usize> = s.shard(0, 0).iter().map(|x| x.index).collect();
        assert_eq!(lengths[order[0]], *lengths.iter().max().unwrap());
        for mega in order.chunks(100) {
            assert!(mega.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]), "a mega-batch is not sorted");
        }
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn the_token_ladder_has_eight_rungs_an_octave_and_wastes_at_most_an_eighth() {
        assert_eq!(FixedShapes::token_size(5), 5);
        assert_eq!(FixedShapes::token_size(1024), 1024);
        assert_eq!(FixedShapes::token_size(1025), 1152);
        assert_eq!(FixedShapes::token_size(2047), 2048);
        for t in 9..20_000 {
            let size = FixedShapes::token_size(t);
            assert!(size >= t && (size - t) * 8 <= t, "{t} -> {size}");
        }
        let sizes: std::collections::BTreeSet<usize> = (2049..=4096).map(FixedShapes::token_size).collect();
        assert_eq!(sizes.len(), 8);
    }

    #[test]
    fn a_short_batch_gets_dummies_and_fillers_labelled_to_be_ignored() {
        let lengths = [3usize, 5, 2, 7, 4, 4, 4, 4];
        let mut offsets = vec![0i64];
        for l in lengths {
            offsets.push(offsets.last().unwrap() + l as i64);
        }
        let total = *offsets.last().unwrap() as usize;
        let (ids, types) = (vec![7i32; total], vec![0u8; total]);
        let tokens = Tokens { input_ids: &ids, token_type_ids: &types, offsets: &offsets };
        let batch = pad(&tokens, &[0, 1], 0);
        let shapes = FixedShapes::new(4, 16);
        let (fixed, labels) = shapes.apply(&batch, &Tensor::from_slice(&[2i64, 0])).unwrap();
        assert_eq!(fixed.input_ids.size(), [(4 + shapes.fillers) as i64, 4, 16]);
        let per_seq = fixed.attention_mask.sum_dim_intlist(2, false, tch::Kind::Int64);
        let per_seq: Vec<i64> = Vec::try_from(per_seq.view([-1])).unwrap();
        assert_eq!(&per_seq[..8], &lengths.map(|l| l as i64), "the real sequences are kept");
        assert!(per_seq[8..].iter().all(|&l| l >= 1), "every extra sequence has a token");
        let tokens: i64 = per_seq.iter().sum();
        assert_eq!(tokens as usize, FixedShapes::token_size(tokens as usize));
        let labels: Vec<i64> = Vec::try_from(labels).unwrap();
        assert_eq!(labels[..2], [2, 0]);
        assert!(labels[2..].iter().all(|&l| l == -100));
        let wide = pad(&tokens_of(&offsets, &ids, &types), &[0, 1, 0, 1, 0], 0);
        assert!(shapes.apply(&wide, &Tensor::from_slice(&[0i64; 5])).is_err(), "5 questions do not fit 4");
    }

    fn tokens_of<'a>(offsets: &'a [i64], ids: &'a [i32], types: &'a [u8]) -> Tokens<'a> {
        Tokens { input_ids: ids, token_type_ids: types, offsets }
    }
}
