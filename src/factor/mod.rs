//! Second factors: one-time codes by email and SMS (`otp`), TOTP (`totp`),
//! recovery codes (`recovery`) and their bounded hashing (`hashing`),
//! contacts as input (`contact`), the attempt budget shared by all of them
//! (`lockout`), remembered devices (`device`), the service that owns the
//! rules of every verification and enrollment flow (`service`), and WebAuthn
//! passkeys on top of it (`webauthn`).

pub mod contact;
pub mod device;
pub mod hashing;
pub mod lockout;
pub mod otp;
pub mod qr;
pub mod recovery;
pub mod service;
pub mod totp;
pub mod webauthn;

pub use service::Factors;
