//! Just enough DER to publish an RSA public key as `SubjectPublicKeyInfo`.

fn len(out: &mut Vec<u8>, n: usize) {
    if n < 0x80 {
        // Fits in one byte by the branch condition.
        out.push(u8::try_from(n).unwrap_or(0));
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | u8::try_from(bytes.len()).unwrap_or(0));
        out.extend_from_slice(&bytes);
    }
}

fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn uint(be: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend_from_slice(&trimmed);
    tlv(0x02, &body)
}

/// DER `SubjectPublicKeyInfo` of an RSA key from its modulus and public exponent (big-endian).
pub(crate) fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    // rsaEncryption, 1.2.840.113549.1.1.1, with NULL parameters.
    const ALG: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let rsa_key = tlv(0x30, &[uint(modulus), uint(exponent)].concat());
    let mut bits = vec![0u8];
    bits.extend_from_slice(&rsa_key);
    tlv(0x30, &[ALG.to_vec(), tlv(0x03, &bits)].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_key_encodes_as_expected() {
        let der = rsa_spki(&[0x00, 0xc3, 0x01], &[0x01, 0x00, 0x01]);
        assert_eq!(
            hex::encode(der),
            concat!(
                "301e",                           // SubjectPublicKeyInfo, 30 bytes
                "300d06092a864886f70d0101010500", // rsaEncryption, NULL
                "030d00",                         // BIT STRING, 0 unused bits
                "300a",                           // RSAPublicKey
                "020300c301",                     // modulus, with a 0x00 for the sign bit
                "0203010001",                     // exponent 65537
            )
        );
        // Long lengths use the long form.
        let mut out = Vec::new();
        len(&mut out, 300);
        assert_eq!(out, [0x82, 0x01, 0x2c]);
    }
}
