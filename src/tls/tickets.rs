//! Session-ticket keys that rotate every [`ROTATION`]: a key encrypts
//! tickets for one period, then only decrypts for one more, then is
//! erased. Ours rather than rustls' `Ticketer` so that the rotation can be
//! driven by a given time (rustls reads the clock itself) and tested.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::aead::{self, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// How long one key encrypts new tickets, in seconds (docs/tls.md).
pub const ROTATION: u64 = 6 * 60 * 60;

const NAME_LEN: usize = 16;
const ALG: &aead::Algorithm = &aead::CHACHA20_POLY1305;

struct Key {
    /// Sent in clear at the ticket's start: which key to try.
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
    /// When it started to encrypt (seconds since the epoch).
    born: u64,
}

impl Key {
    fn new(rng: &SystemRandom, born: u64) -> Option<Key> {
        let mut secret = [0u8; 32];
        let mut name = [0u8; NAME_LEN];
        rng.fill(&mut secret).ok()?;
        rng.fill(&mut name).ok()?;
        let aead = LessSafeKey::new(UnboundKey::new(ALG, &secret).ok()?);
        secret.fill(0);
        Some(Key { name, aead, born })
    }

    /// Whether a ticket under this key may still resume at `now`: for the
    /// period it encrypted and the one after.
    fn accepts_at(&self, now: u64) -> bool {
        now < self.born.saturating_add(2 * ROTATION)
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
}

/// The ticket keys of one applied TLS config.
pub struct Tickets {
    rng: SystemRandom,
    keys: Mutex<Keys>,
    /// The longest ticket made: longer input is refused unread (it cannot
    /// be ours, and an oracle attack needs long ciphertexts).
    longest: AtomicUsize,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets").finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Tickets {
    /// `None` when the system has no randomness to give.
    pub fn new() -> Option<Tickets> {
        Tickets::starting_at(unix_now())
    }

    fn starting_at(now: u64) -> Option<Tickets> {
        let rng = SystemRandom::new();
        let current = Key::new(&rng, now)?;
        Some(Tickets {
            rng,
            keys: Mutex::new(Keys {
                current,
                previous: None,
            }),
            longest: AtomicUsize::new(0),
        })
    }

    /// The keys as they are at `now`: rotated if the current one's period
    /// is over. A previous key past its second period is erased, even when
    /// no rotation happened in between (an idle service).
    fn keys_at(&self, now: u64) -> std::sync::MutexGuard<'_, Keys> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if now >= keys.current.born.saturating_add(ROTATION)
            && let Some(next) = Key::new(&self.rng, now)
        {
            let old = std::mem::replace(&mut keys.current, next);
            keys.previous = Some(old);
        }
        if keys.previous.as_ref().is_some_and(|k| !k.accepts_at(now)) {
            keys.previous = None;
        }
        keys
    }

    fn encrypt_at(&self, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        let keys = self.keys_at(now);
        let key = &keys.current;
        // A key that could not be replaced (no randomness) encrypts no more.
        if now >= key.born.saturating_add(ROTATION) {
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + ALG.tag_len());
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.name),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        self.longest.fetch_max(out.len(), Ordering::Relaxed);
        Some(out)
    }

    fn decrypt_at(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        if ticket.len() > self.longest.load(Ordering::Relaxed) {
            return None;
        }
        let (name, rest) = ticket.split_at_checked(NAME_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let keys = self.keys_at(now);
        let key = [Some(&keys.current), keys.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.name == name && k.accepts_at(now))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(key.name), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    /// The hint to clients: what every ticket is sure to get (one made at
    /// the end of a period resumes for one more).
    fn lifetime(&self) -> u32 {
        ROTATION as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.encrypt_at(plain, unix_now())
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.decrypt_at(ticket, unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    #[test]
    fn a_ticket_resumes_in_its_period_and_the_next_but_not_after() {
        let t = Tickets::starting_at(T0).unwrap();
        let first = t.encrypt_at(b"session one", T0 + 10).unwrap();
        assert_eq!(t.decrypt_at(&first, T0 + 20).unwrap(), b"session one");
        // Just before the rotation: still the first key.
        let late = t.encrypt_at(b"late in one", T0 + ROTATION - 1).unwrap();
        assert_eq!(late[..NAME_LEN], first[..NAME_LEN]);

        // The next period: a new key encrypts, the previous still resumes.
        let second = t.encrypt_at(b"session two", T0 + ROTATION).unwrap();
        assert_ne!(second[..NAME_LEN], first[..NAME_LEN], "the key rotated");
        assert_eq!(
            t.decrypt_at(&first, T0 + ROTATION + 1).unwrap(),
            b"session one"
        );
        assert_eq!(
            t.decrypt_at(&late, T0 + 2 * ROTATION - 1).unwrap(),
            b"late in one"
        );

        // Two rotations on: the first key is gone, the second resumes.
        let third = t.encrypt_at(b"session three", T0 + 2 * ROTATION).unwrap();
        assert_ne!(third[..NAME_LEN], second[..NAME_LEN]);
        assert_eq!(t.decrypt_at(&first, T0 + 2 * ROTATION), None);
        assert_eq!(t.decrypt_at(&late, T0 + 2 * ROTATION), None);
        assert_eq!(
            t.decrypt_at(&second, T0 + 2 * ROTATION + 1).unwrap(),
            b"session two"
        );
        assert_eq!(
            t.decrypt_at(&third, T0 + 2 * ROTATION + 1).unwrap(),
            b"session three"
        );
    }

    #[test]
    fn an_idle_service_does_not_keep_an_old_key_alive() {
        let t = Tickets::starting_at(T0).unwrap();
        let old = t.encrypt_at(b"old", T0).unwrap();
        // Nothing happens for two periods, then one call: one rotation, but
        // the key it demotes is past its second period.
        assert_eq!(t.decrypt_at(&old, T0 + 2 * ROTATION), None);
        let t = Tickets::starting_at(T0).unwrap();
        let old = t.encrypt_at(b"old", T0).unwrap();
        assert_eq!(t.decrypt_at(&old, T0 + 2 * ROTATION - 1).unwrap(), b"old");
    }

    #[test]
    fn tickets_of_another_config_or_tampered_ones_do_not_resume() {
        let a = Tickets::starting_at(T0).unwrap();
        let b = Tickets::starting_at(T0).unwrap();
        let ticket = a.encrypt_at(b"secret state", T0).unwrap();
        // b has made a ticket as long, so only the key decides.
        b.encrypt_at(b"secret state", T0).unwrap();
        assert_eq!(b.decrypt_at(&ticket, T0), None);
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(a.decrypt_at(&bad, T0), None, "byte {i} flipped");
        }
        for n in 0..ticket.len() {
            assert_eq!(a.decrypt_at(&ticket[..n], T0), None, "{n} bytes");
        }
        let mut longer = ticket.clone();
        longer.push(0);
        assert_eq!(a.decrypt_at(&longer, T0), None);
        assert_eq!(a.decrypt_at(&ticket, T0).unwrap(), b"secret state");
    }

    #[test]
    fn clients_are_told_the_lifetime_every_ticket_gets() {
        let t = Tickets::starting_at(T0).unwrap();
        assert_eq!(u64::from(t.lifetime()), ROTATION);
        assert!(t.enabled());
    }
}
