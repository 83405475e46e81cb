//! Version ids: 32 lowercase hex digits that grow with time.
//!
//! Key Vault lists a secret's versions sorted by version id, and so does this server (the stores page by it:
//! one index serves both the lookup by id and the listing). An id is laid out as a UUIDv7 (RFC 9562) without
//! dashes: 48 bits of Unix time in milliseconds, the version nibble `7`, 12 bits, the variant bits `10`, 62
//! bits; the 74 bits after the time are random. So a secret's versions made by this server list oldest
//! first, as people expect, while ids stay unguessable (74 random bits for the first id in a millisecond).
//!
//! Within one process ids strictly increase (RFC 9562 §6.2, monotonic random): an id made in the same
//! millisecond as the previous one, or after the clock stepped back, continues from the previous id plus a
//! random increment of 1 to 2³², keeping its time. Ids made by several processes (nodes sharing
//! PostgreSQL) interleave by their clocks; the order of two sets of one name racing each other is
//! arbitrary either way. Across restarts, the store keeps a millisecond at or past every stored id (a set
//! whose id passes it moves it on first: [`crate::store::reserve_version_clock`]), and a server starts from
//! there ([`continue_after`]): versions made after a restart with the clock set back — after a crash too —
//! still list after the ones made before it.

use keyvault_types::rules;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits after the timestamp that are not fixed: 12 + 62.
const RANDOM_BITS: u32 = 74;
const RANDOM_MASK: u128 = (1 << RANDOM_BITS) - 1;
const MS_MASK: u64 = (1 << 48) - 1;

/// The previous id's (milliseconds, random part).
static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));

/// A new version id (see the module documentation).
pub fn new_version() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random number generator failed");
    let random = u128::from_le_bytes(bytes);
    let now_ms = now_ms() & MS_MASK;
    let (ms, r) = {
        let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
        *last = next(*last, now_ms, random);
        *last
    };
    format!("{:032x}", layout(ms, r))
}

/// Makes every id from now on sort after any id whose millisecond is `ms` or earlier (what the generator of
/// an earlier process over the same store had reached): ids continue at `ms + 1` while the clock is behind.
pub fn continue_after(ms: u64) {
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    *last = continued(*last, ms);
}

/// The state after [`continue_after`]`(ms)` from `last`.
fn continued(last: (u64, u128), ms: u64) -> (u64, u128) {
    let ms = ms & MS_MASK;
    // In `last`'s own millisecond too: an id of that millisecond with a larger random part (a restored one)
    // may have been stored.
    if ms >= last.0 {
        // The random part full: the next id borrows the next millisecond (see `next`).
        (ms, RANDOM_MASK)
    } else {
        last
    }
}

/// The latest millisecond among `ids` laid out as this module lays them out, if it is no more than a day
/// ahead of the clock: after a restore, ids made from then on continue after the restored ones
/// ([`continue_after`]) — a backup from a vault whose clock ran ahead keeps its order. Random ids that look
/// like this layout by chance (see [`rules::time_ordered_version_ms`]) carry a time anywhere up to the year
/// 10889: the bound leaves those alone.
pub fn latest_time_in<'a>(ids: impl IntoIterator<Item = &'a str>) -> Option<u64> {
    let bound = now_ms().saturating_add(86_400_000);
    ids.into_iter()
        .filter_map(rules::time_ordered_version_ms)
        .filter(|ms| *ms <= bound)
        .max()
}

/// The clock, in Unix milliseconds (0 before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The (milliseconds, random part) following `last` at `now_ms`, drawing on `random`.
fn next(last: (u64, u128), now_ms: u64, random: u128) -> (u64, u128) {
    // A fresh millisecond starts below half the range, so the increments that follow have room.
    let fresh = random & (RANDOM_MASK >> 1);
    if now_ms > last.0 {
        return (now_ms, fresh);
    }
    let step = 1 + (random >> 96); // 1 ..= 2^32, from bits `fresh` does not use
    match last.1.checked_add(step).filter(|r| *r <= RANDOM_MASK) {
        Some(r) => (last.0, r),
        // The random part ran out (2^73 ids in one millisecond, or a corrupted state): borrow the next one.
        None => ((last.0 + 1) & MS_MASK, fresh),
    }
}

/// The UUIDv7 bits of (milliseconds, 74-bit random part).
fn layout(ms: u64, r: u128) -> u128 {
    let rand_a = (r >> 62) & 0xfff;
    let rand_b = r & ((1 << 62) - 1);
    (u128::from(ms) << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuidv7_shaped_lowercase_hex_and_carry_the_time() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let id = new_version();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        assert!(rules::is_valid_version(&id), "{id}");
        assert_eq!(id, id.to_ascii_lowercase());
        assert_eq!(&id[12..13], "7", "version nibble: {id}");
        assert!("89ab".contains(&id[16..17]), "variant: {id}");
        let ms = u128::from_str_radix(&id[..12], 16).unwrap();
        // Another test's id may have pushed the time ahead by a millisecond at most.
        assert!(
            ms >= before && ms <= after + 1,
            "{before} <= {ms} <= {after}"
        );
    }

    #[test]
    fn continuing_after_a_recorded_millisecond_only_ever_raises_the_state() {
        let ahead = 5_000;
        let state = continued((1_000, 7), ahead);
        assert_eq!(state, (ahead, RANDOM_MASK));
        // The next id borrows the millisecond after it, whatever the clock says.
        assert_eq!(
            next(state, 1_200, 9 << 96),
            (ahead + 1, (9 << 96) & (RANDOM_MASK >> 1))
        );
        assert!(layout(ahead + 1, 0) > layout(ahead, RANDOM_MASK));
        // An earlier millisecond changes nothing.
        assert_eq!(continued((1_000, 7), 999), (1_000, 7));
        // The state's own millisecond: ids of it may have been stored with any random part (a restore of ids
        // made in that millisecond elsewhere), so the next id takes the millisecond after (a57-3: it went on
        // in the same millisecond, from a random part that may be below theirs).
        let same = continued((1_000, 7), 1_000);
        assert_eq!(same, (1_000, RANDOM_MASK));
        let after = next(same, 1_000, 3 << 96);
        assert_eq!(after.0, 1_001);
        assert!(layout(after.0, after.1) > layout(1_000, RANDOM_MASK));
    }

    #[test]
    fn the_latest_time_of_restored_ids_ignores_random_ones() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let id = |ms: u64, rest: &str| format!("{ms:012x}{rest}");
        let hour_ahead = id(now + 3_600_000, "7abc8def0123456789ab");
        let earlier = id(now - 1_000, "7abc9def0123456789ab");
        let far = id(now * 100, "7abcadef0123456789ab");
        let random = id(now + 7_200_000, "4abc8def0123456789ab");
        assert_eq!(
            latest_time_in([
                earlier.as_str(),
                hour_ahead.as_str(),
                far.as_str(),
                random.as_str()
            ]),
            Some(now + 3_600_000)
        );
        assert_eq!(latest_time_in([random.as_str()]), None);
    }

    #[test]
    fn ids_strictly_increase_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..5_000).map(|_| new_version()).collect::<Vec<_>>()))
            .collect();
        let mut all = Vec::new();
        for t in threads {
            let ids = t.join().unwrap();
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "each thread sees increasing ids"
            );
            all.extend(ids);
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "no id twice");
    }

    #[test]
    fn same_millisecond_and_clock_steps_back_continue_from_the_last_id() {
        let last = (1_000, 5);
        let (ms, r) = next(last, 1_000, 7 << 96);
        assert_eq!(
            (ms, r),
            (1_000, 5 + 8),
            "same millisecond: last + 1 + the high random bits"
        );
        let (ms, r) = next(last, 900, 0);
        assert_eq!(
            (ms, r),
            (1_000, 6),
            "clock stepped back: keep the last time"
        );
        let (ms, r) = next(last, 1_001, u128::MAX);
        assert_eq!(
            (ms, r),
            (1_001, RANDOM_MASK >> 1),
            "a new millisecond starts fresh, below half"
        );
        let (ms, r) = next((1_000, RANDOM_MASK), 1_000, 3);
        assert_eq!(
            (ms, r),
            (1_001, 3),
            "exhausted: borrow the next millisecond"
        );
        // Continuing after a recorded millisecond: the next id takes the one after it, freshly random.
        assert_eq!(
            next((1_000, RANDOM_MASK), 900, 3 << 96),
            (1_001, 0),
            "continued after 1,000 with the clock at 900"
        );
        // The layout keeps the order of (ms, r).
        assert!(layout(1_000, RANDOM_MASK) < layout(1_001, 0));
        assert!(layout(1_000, 1 << 62) > layout(1_000, (1 << 62) - 1));
    }
}
