//! QR codes of `otpauth://` URIs for authenticator apps: a PNG (base64, for
//! `<img src="data:image/png;base64,…">`), an SVG, and a text rendering for a
//! terminal.

use base64::Engine;
use image::{ImageEncoder, Luma};
use qrcode::render::{svg, unicode};
use qrcode::{EcLevel, QrCode};

#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("data too long for a QR code")]
    TooLong,
    #[error("PNG encoding failed: {0}")]
    Png(String),
}

/// Level M (15 % of the symbol recoverable) keeps a 64-byte SHA-512 secret
/// URI at a size phone cameras read easily.
fn code(data: &str) -> Result<QrCode, QrError> {
    QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M).map_err(|_| QrError::TooLong)
}

/// PNG bytes: black on white, with the 4-module quiet zone the standard
/// asks for, at least 256 px wide.
pub fn png(data: &str) -> Result<Vec<u8>, QrError> {
    let img = code(data)?
        .render::<Luma<u8>>()
        .quiet_zone(true)
        .min_dimensions(256, 256)
        .build();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::L8,
        )
        .map_err(|e| QrError::Png(e.to_string()))?;
    Ok(out)
}

/// [`png`] as standard base64 (with padding).
pub fn png_base64(data: &str) -> Result<String, QrError> {
    Ok(base64::engine::general_purpose::STANDARD.encode(png(data)?))
}

/// A standalone SVG document.
pub fn svg(data: &str) -> Result<String, QrError> {
    Ok(code(data)?
        .render::<svg::Color<'_>>()
        .quiet_zone(true)
        .min_dimensions(256, 256)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build())
}

/// Unicode half blocks, two modules per character cell, for a terminal with
/// a dark background (dark modules are blanks, light ones are blocks; most
/// authenticator apps also read the inverse on a light background).
pub fn terminal(data: &str) -> Result<String, QrError> {
    Ok(code(data)?
        .render::<unicode::Dense1x2>()
        .quiet_zone(true)
        .dark_color(unicode::Dense1x2::Light)
        .light_color(unicode::Dense1x2::Dark)
        .build())
}

/// `twofa-authz qr [URI]`: prints the QR code of `uri` (or of standard
/// input: a URI, or the JSON answer of `generate-totp`) for a terminal.
/// Exit code 0, or 1 when there is nothing printable. The URI is not
/// echoed: it holds the secret.
pub fn print_to_terminal(uri: Option<&str>) -> i32 {
    let input = match uri {
        Some(u) if u != "-" => u.to_string(),
        _ => {
            use std::io::Read;
            let mut text = String::new();
            // A generate-totp answer is a few KiB; refuse anything huge.
            let read = std::io::stdin().take(1 << 20).read_to_string(&mut text);
            if read.is_err() {
                eprintln!("twofa-authz: cannot read the URI from standard input");
                return 1;
            }
            text
        }
    };
    // Also accept the whole JSON answer of generate-totp piped in.
    let input = input.trim();
    let uri = serde_json::from_str::<serde_json::Value>(input)
        .ok()
        .and_then(|v| v.get("otpauth_uri")?.as_str().map(str::to_string))
        .unwrap_or_else(|| input.trim_matches('"').to_string());
    if uri.is_empty() {
        eprintln!("twofa-authz: give an otpauth:// URI as argument or on standard input");
        return 1;
    }
    match terminal(&uri) {
        Ok(t) => {
            println!("{t}");
            0
        }
        Err(e) => {
            eprintln!("twofa-authz: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "otpauth://totp/2FA-Middleware:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=2FA-Middleware&algorithm=SHA1&digits=6&period=30";

    #[test]
    fn png_is_a_png() {
        let bytes = png(URI).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let img = image::load_from_memory(&bytes).unwrap().to_luma8();
        assert!(img.width() >= 256 && img.width() == img.height());
        // Quiet zone: the corners are white.
        assert_eq!(img.get_pixel(0, 0).0[0], 255);
        let b64 = png_base64(URI).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            bytes
        );
    }

    #[test]
    fn svg_and_terminal() {
        let s = svg(URI).unwrap();
        assert!(s.starts_with("<?xml") && s.contains("<svg") && s.ends_with("</svg>"));
        let t = terminal(URI).unwrap();
        assert!(t.lines().count() > 10);
        assert!(t.contains('█') || t.contains('▀') || t.contains('▄'));
        // A SHA-512 secret (64 bytes → 103 base32 chars) still fits.
        let long = format!("otpauth://totp/x:y?secret={}&issuer=x", "A".repeat(103));
        assert!(png(&long).is_ok());
        assert!(matches!(png(&"x".repeat(5000)), Err(QrError::TooLong)));
    }
}
