//! Image inputs: decoding under size limits, grayscale or RGB, bilinear
//! resize, `(pixel / scale - mean) / std`, in the declared layout.
//!
//! The header is read first, and before any pixel is decoded an image is
//! refused (422 with its pointer) when it is over [`MAX_IMAGE_SIDE`] a side or
//! when its decoded size (width × height × channels × bytes per sample) is
//! over its input's cap ([`ImageSpec::decoded_bytes_cap`]: `max_decoded_bytes`,
//! else derived from `resize`). The decoder then runs under the `image`
//! crate's own limits (sides and [`MAX_IMAGE_DECODE_BYTES`]) as a second line
//! of defence. Each image asks for its working set (see [`working_bytes`])
//! before it is decoded, and holds it until it is resized, so the node can
//! count it against its budget (`budget.rs`).
//!
//! Uses only `prepost::common`.

use std::io::Cursor;

use contract::definition::{ImageDecode, ImageSpec, Layout};
use contract::limits::{MAX_IMAGE_DECODE_BYTES, MAX_IMAGE_SIDE, MAX_TENSOR_ELEMENTS};
use contract::tensor::{shape_display, DType, Tensor, TensorData};
use contract::ApiError;
use contract::InputBinding;
use image::imageops::FilterType;
use image::{ColorType, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::common::refuse;

fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else {
        None
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    if format == ImageFormat::Png {
        "PNG"
    } else {
        "JPEG"
    }
}

/// The estimated peak memory of decoding one `width`×`height` image that
/// decodes to `decoded` bytes into `channels` 8-bit channels: the decoded
/// buffer plus the converted copy (the resized copy is small beside them).
pub fn working_bytes(decoded: u64, width: u32, height: u32, channels: usize) -> u64 {
    let converted = u64::from(width) * u64::from(height) * channels as u64;
    decoded.saturating_add(converted)
}

fn describe(color: ColorType) -> String {
    let channels = color.channel_count();
    let bits = color.bits_per_pixel() / u16::from(channels.max(1));
    format!("{channels} channel(s) of {bits} bits")
}

/// Decodes the images of one field into its tensor, as the spec declares.
pub fn image_tensor(
    spec: &ImageSpec,
    binding: &InputBinding,
    images: &[Vec<u8>],
    pointer: &str,
) -> Result<Tensor, ApiError> {
    image_tensor_within(spec, binding, images, pointer, |_| Ok(()))
}

/// [`image_tensor`], where each image, once its header passed the checks and
/// before any pixel is decoded, asks `admit` for its working set in bytes
/// ([`working_bytes`]) and holds what `admit` returns until it is resized. An
/// error from `admit` ends the call with that error.
pub fn image_tensor_within<G>(
    spec: &ImageSpec,
    binding: &InputBinding,
    images: &[Vec<u8>],
    pointer: &str,
    mut admit: impl FnMut(u64) -> Result<G, ApiError>,
) -> Result<Tensor, ApiError> {
    let item = |i: usize| {
        if images.len() == 1 {
            pointer.to_string()
        } else {
            format!("{pointer}/{i}")
        }
    };
    let channels = spec.channels();
    let cap = spec.decoded_bytes_cap();
    let mut size: Option<(u32, u32)> = spec.resize.map(|[h, w]| (h, w));
    let mut pixels: Vec<Vec<u8>> = Vec::with_capacity(images.len());
    for (i, bytes) in images.iter().enumerate() {
        let at = item(i);
        let format = match (spec.decode, sniff(bytes)) {
            (ImageDecode::Png, Some(ImageFormat::Png)) => ImageFormat::Png,
            (ImageDecode::Jpeg, Some(ImageFormat::Jpeg)) => ImageFormat::Jpeg,
            (ImageDecode::Any, Some(found)) => found,
            (ImageDecode::Png, _) => return Err(refuse(&at, "not a PNG image")),
            (ImageDecode::Jpeg, _) => return Err(refuse(&at, "not a JPEG image")),
            (ImageDecode::Any, None) => return Err(refuse(&at, "not a PNG or JPEG image")),
        };
        let name = format_name(format);
        let invalid = |e: image::ImageError| refuse(&at, format!("not a valid {name} image: {e}"));
        // The header only: no pixel is decoded before the checks below.
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        let mut header_limits = Limits::no_limits();
        header_limits.max_alloc = Some(MAX_IMAGE_DECODE_BYTES);
        reader.limits(header_limits);
        let mut decoder = reader.into_decoder().map_err(invalid)?;
        let (w, h) = decoder.dimensions();
        if w == 0 || h == 0 || w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
            return Err(refuse(
                &at,
                format!("the image is {w}x{h}; each side must be in 1..={MAX_IMAGE_SIDE}"),
            ));
        }
        let decoded_bytes = decoder.total_bytes();
        if decoded_bytes > cap {
            return Err(refuse(
                &at,
                format!(
                    "the image is {w}x{h} with {}, {decoded_bytes} bytes decoded; the limit for this input is {cap} bytes",
                    describe(decoder.color_type())
                ),
            ));
        }
        let (th, tw) = match size {
            Some(fixed) if spec.resize.is_some() => fixed,
            Some((sh, sw)) if (sh, sw) != (h, w) => {
                return Err(refuse(
                    &at,
                    format!("the images of one call must have the same size; this one is {w}x{h}, the first {sw}x{sh}"),
                ))
            }
            _ => (h, w),
        };
        size = Some((th, tw));
        let elements = (pixels.len() + 1) * channels * th as usize * tw as usize;
        if elements > MAX_TENSOR_ELEMENTS {
            return Err(refuse(
                &at,
                format!("the images give {elements} values; the limit is {MAX_TENSOR_ELEMENTS}"),
            ));
        }
        // The second line of defence: the decoder's own limits, with the
        // output buffer reserved as `ImageReader::decode` does.
        let mut limits = Limits::default();
        limits.max_image_width = Some(MAX_IMAGE_SIDE);
        limits.max_image_height = Some(MAX_IMAGE_SIDE);
        limits.max_alloc = Some(MAX_IMAGE_DECODE_BYTES);
        limits.reserve(decoded_bytes).map_err(invalid)?;
        decoder.set_limits(limits).map_err(invalid)?;
        let held = admit(working_bytes(decoded_bytes, w, h, channels))?;
        let decoded = DynamicImage::from_decoder(decoder).map_err(invalid)?;
        let raw = if spec.grayscale {
            let luma = decoded.into_luma8();
            if (luma.height(), luma.width()) == (th, tw) {
                luma.into_raw()
            } else {
                image::imageops::resize(&luma, tw, th, FilterType::Triangle).into_raw()
            }
        } else {
            let rgb = decoded.into_rgb8();
            if (rgb.height(), rgb.width()) == (th, tw) {
                rgb.into_raw()
            } else {
                image::imageops::resize(&rgb, tw, th, FilterType::Triangle).into_raw()
            }
        };
        drop(held);
        pixels.push(raw);
    }
    let (h, w) = size.map_or((0, 0), |(h, w)| (h as usize, w as usize));
    let n = pixels.len();
    let shape = match spec.layout {
        Layout::Nchw => vec![n, channels, h, w],
        Layout::Nhwc => vec![n, h, w, channels],
        Layout::Flat => vec![n, h * w * channels],
    };
    let fits = shape.len() == binding.shape.len()
        && shape
            .iter()
            .zip(&binding.shape)
            .all(|(s, m)| *m < 0 || *s as i64 == *m);
    if !fits {
        return Err(refuse(
            pointer,
            format!(
                "the image gives a {} tensor, but {:?} is {}; send images of the size the model takes",
                shape_display(&shape.iter().map(|d| *d as i64).collect::<Vec<_>>()),
                binding.tensor,
                shape_display(&binding.shape)
            ),
        ));
    }
    let scale: Vec<(f64, f64)> = (0..channels)
        .map(|c| (spec.mean_of(c), spec.std_of(c)))
        .collect();
    let value = |px: u8, c: usize| (f64::from(px) / spec.scale - scale[c].0) / scale[c].1;
    let mut values: Vec<f64> = Vec::with_capacity(n * channels * h * w);
    for raw in &pixels {
        match spec.layout {
            Layout::Nchw => {
                for c in 0..channels {
                    values.extend(raw.iter().skip(c).step_by(channels).map(|px| value(*px, c)));
                }
            }
            Layout::Nhwc | Layout::Flat => {
                values.extend(
                    raw.iter()
                        .enumerate()
                        .map(|(i, px)| value(*px, i % channels)),
                );
            }
        }
    }
    let data = match binding.dtype {
        DType::Float64 => TensorData::Float64(values),
        _ => TensorData::Float32(values.into_iter().map(|v| v as f32).collect()),
    };
    Ok(Tensor { shape, data })
}

#[cfg(test)]
mod tests {
    use contract::{ErrorCode, InputSource};
    use serde_json::{json, Value};

    use super::*;

    fn png(img: image::DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn gray(w: u32, h: u32) -> image::DynamicImage {
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([((x + y * w) % 256) as u8])
        }))
    }

    fn image_spec(spec: Value) -> ImageSpec {
        serde_json::from_value(spec).unwrap()
    }

    fn image_binding(shape: &[i64]) -> InputBinding {
        InputBinding {
            field: "image".into(),
            tensor: "x".into(),
            dtype: DType::Float32,
            shape: shape.to_vec(),
            source: InputSource::Image,
        }
    }

    fn floats(t: &Tensor) -> Vec<f32> {
        match &t.data {
            TensorData::Float32(v) => v.clone(),
            other => panic!("not float32: {other:?}"),
        }
    }

    fn pointer_and_message(err: &ApiError) -> (String, String) {
        let d = &err.details.as_ref().unwrap()[0];
        (
            d["pointer"].as_str().unwrap().to_string(),
            d["message"].as_str().unwrap().to_string(),
        )
    }

    #[test]
    fn a_grayscale_png_becomes_flat_scaled_pixels() {
        let spec = image_spec(
            json!({"decode": "png", "resize": [28, 28], "grayscale": true, "layout": "flat"}),
        );
        let t = image_tensor(
            &spec,
            &image_binding(&[-1, 784]),
            &[png(gray(28, 28))],
            "/image",
        )
        .unwrap();
        assert_eq!(t.shape, vec![1, 784]);
        let v = floats(&t);
        assert_eq!(v[0], 0.0);
        assert!((v[29] - 29.0 / 255.0).abs() < 1e-7);
        assert!((v[300] - (300 % 256) as f32 / 255.0).abs() < 1e-7);
        // A larger image is resized to fit.
        let t = image_tensor(
            &spec,
            &image_binding(&[-1, 784]),
            &[png(gray(56, 40))],
            "/image",
        )
        .unwrap();
        assert_eq!(t.shape, vec![1, 784]);
    }

    #[test]
    fn rgb_layouts_and_normalisation() {
        let rgb = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgb([255, 0, 51])
            } else {
                image::Rgb([0, 255, 102])
            }
        }));
        let bytes = png(rgb);
        let nchw = image_spec(json!({"mean": [0.5], "std": [0.5, 0.5, 0.2]}));
        let t = image_tensor(
            &nchw,
            &image_binding(&[-1, 3, -1, -1]),
            std::slice::from_ref(&bytes),
            "/image",
        )
        .unwrap();
        assert_eq!(t.shape, vec![1, 3, 1, 2]);
        // channel-major: R of both pixels, then G, then B
        let v = floats(&t);
        let expect = [1.0, -1.0, -1.0, 1.0, (0.2 - 0.5) / 0.2, (0.4 - 0.5) / 0.2];
        for (a, b) in v.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        let nhwc = image_spec(json!({"layout": "nhwc", "scale": 1.0}));
        let t = image_tensor(&nhwc, &image_binding(&[-1, -1, -1, 3]), &[bytes], "/image").unwrap();
        assert_eq!(t.shape, vec![1, 1, 2, 3]);
        assert_eq!(floats(&t), vec![255.0, 0.0, 51.0, 0.0, 255.0, 102.0]);
    }

    #[test]
    fn hostile_or_wrong_images_are_refused_with_their_pointer() {
        let flat = image_spec(json!({"decode": "png", "grayscale": true, "layout": "flat"}));
        let binding = image_binding(&[-1, 784]);
        // Not a PNG at all.
        let err = image_tensor(&flat, &binding, &[b"hello world".to_vec()], "/image").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert_eq!(
            pointer_and_message(&err),
            ("/image".into(), "not a PNG image".into())
        );
        // A PNG signature with garbage after it.
        let mut broken = png(gray(28, 28));
        broken.truncate(40);
        let err = image_tensor(&flat, &binding, &[broken], "/image").unwrap_err();
        assert!(
            pointer_and_message(&err)
                .1
                .starts_with("not a valid PNG image"),
            "{err:?}"
        );
        // Over the side limit: refused from the header, before decoding.
        let huge = png(image::DynamicImage::ImageLuma8(image::GrayImage::new(
            5000, 8,
        )));
        let err = image_tensor(&flat, &binding, &[huge], "/image").unwrap_err();
        assert!(pointer_and_message(&err).1.contains("5000x8"), "{err:?}");
        // Without resize, the image must have the size the model takes.
        let err = image_tensor(&flat, &binding, &[png(gray(30, 30))], "/image").unwrap_err();
        assert!(pointer_and_message(&err).1.contains("[N, 784]"), "{err:?}");
        // In an array, the pointer names the item.
        let two = [png(gray(28, 28)), b"junk".to_vec()];
        let err = image_tensor(&flat, &binding, &two, "/image").unwrap_err();
        assert_eq!(pointer_and_message(&err).0, "/image/1");
        // A JPEG where only PNG is declared; accepted by "any".
        let mut jpeg = Cursor::new(Vec::new());
        gray(28, 28).write_to(&mut jpeg, ImageFormat::Jpeg).unwrap();
        let jpeg = jpeg.into_inner();
        let err = image_tensor(&flat, &binding, std::slice::from_ref(&jpeg), "/image").unwrap_err();
        assert_eq!(pointer_and_message(&err).1, "not a PNG image");
        let any = image_spec(json!({"grayscale": true, "layout": "flat"}));
        let t = image_tensor(&any, &binding, &[jpeg], "/image").unwrap();
        assert_eq!(t.shape, vec![1, 784]);
    }

    /// A PNG file from its chunks, each `(type, data)`, with their CRCs.
    fn png_chunks(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = 0xFFFF_FFFFu32;
            for b in bytes {
                crc ^= u32::from(*b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in chunks {
            out.extend((data.len() as u32).to_be_bytes());
            let mut typed = kind.to_vec();
            typed.extend(data);
            out.extend(&typed);
            out.extend(crc32(&typed).to_be_bytes());
        }
        out
    }

    /// A PNG whose header claims `w`x`h`, 16-bit RGBA, with junk for pixels.
    fn claimed_png(w: u32, h: u32) -> Vec<u8> {
        let mut ihdr = Vec::new();
        ihdr.extend(w.to_be_bytes());
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([16, 6, 0, 0, 0]); // 16 bits, RGBA, deflate, no filter, no interlace
        png_chunks(&[
            (b"IHDR", ihdr),
            (b"IDAT", b"not a zlib stream".to_vec()),
            (b"IEND", Vec::new()),
        ])
    }

    /// The finding's bomb, made by the `image` crate's encoder: 4096x4096
    /// 16-bit RGBA zeros, about 130 KB that decode to 128 MiB.
    fn bomb() -> Vec<u8> {
        use image::codecs::png::{CompressionType, FilterType, PngEncoder};
        use image::ImageEncoder;
        let mut out = Vec::new();
        PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::NoFilter)
            .write_image(
                &vec![0; 4096 * 4096 * 8],
                4096,
                4096,
                image::ExtendedColorType::Rgba16,
            )
            .unwrap();
        out
    }

    #[test]
    fn the_decoded_size_is_capped_from_the_header_before_any_pixel_is_decoded() {
        let fashion = image_spec(
            json!({"decode": "png", "resize": [28, 28], "grayscale": true, "layout": "flat"}),
        );
        let binding = image_binding(&[-1, 784]);
        let asked = std::cell::RefCell::new(Vec::new());
        let admit = |bytes: u64| {
            asked.borrow_mut().push(bytes);
            Ok(())
        };
        // A header alone claims 128 MiB: refused with its size and the cap.
        // Its pixels are junk, so decoding would have failed differently.
        let claimed = claimed_png(4096, 4096);
        assert!(claimed.len() < 100);
        let err =
            image_tensor_within(&fashion, &binding, &[claimed], "/image", &admit).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput);
        let cap = contract::limits::DEFAULT_IMAGE_DECODED_BYTES;
        assert_eq!(
            pointer_and_message(&err),
            (
                "/image".into(),
                format!(
                    "the image is 4096x4096 with 4 channel(s) of 16 bits, 134217728 bytes decoded; the limit for this input is {cap} bytes"
                )
            )
        );
        // The real bomb: a small file that decodes to 128 MiB, the second of two.
        let bomb = bomb();
        assert!(bomb.len() < 200 * 1024, "{} bytes", bomb.len());
        let two = [png(gray(28, 28)), bomb];
        let err = image_tensor_within(&fashion, &binding, &two, "/image", &admit).unwrap_err();
        let (pointer, message) = pointer_and_message(&err);
        assert_eq!(pointer, "/image/1");
        assert!(message.contains("134217728 bytes decoded"), "{message}");
        // Only the first, normal image asked for memory: 784 bytes decoded and
        // 784 converted.
        assert_eq!(*asked.borrow(), vec![2 * 784]);

        // A declared max_decoded_bytes replaces the default.
        let mut tight = fashion.clone();
        tight.max_decoded_bytes = Some(700);
        let err = image_tensor(&tight, &binding, &[png(gray(28, 28))], "/image").unwrap_err();
        assert!(
            pointer_and_message(&err)
                .1
                .ends_with("784 bytes decoded; the limit for this input is 700 bytes"),
            "{err:?}"
        );
        // What admit refuses ends the call with its error, before decoding.
        let err = image_tensor_within(&fashion, &binding, &[png(gray(28, 28))], "/image", |_| {
            Err::<(), _>(ApiError::new(ErrorCode::Timeout, "late"))
        })
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::Timeout);
    }

    #[test]
    fn the_default_cap_follows_the_resize_within_its_bounds() {
        use contract::limits::{DEFAULT_IMAGE_DECODED_BYTES, MAX_IMAGE_DECODE_BYTES};
        let cap = |spec: Value| image_spec(spec).decoded_bytes_cap();
        // Small resizes still take ordinary photos (a 12-megapixel RGB one is 36 MiB).
        assert_eq!(
            cap(json!({"resize": [28, 28]})),
            DEFAULT_IMAGE_DECODED_BYTES
        );
        assert_eq!(
            cap(json!({"resize": [224, 224]})),
            DEFAULT_IMAGE_DECODED_BYTES
        );
        const { assert!(4032 * 3024 * 3 < DEFAULT_IMAGE_DECODED_BYTES) };
        // 16 × the resized RGBA 8-bit bytes.
        assert_eq!(cap(json!({"resize": [1024, 1024]})), 64 << 20);
        assert_eq!(cap(json!({"resize": [4096, 4096]})), MAX_IMAGE_DECODE_BYTES);
        assert_eq!(cap(json!({})), DEFAULT_IMAGE_DECODED_BYTES);
        assert_eq!(cap(json!({"max_decoded_bytes": 1000})), 1000);
        assert_eq!(
            cap(json!({"resize": [28, 28], "max_decoded_bytes": 200 << 20})),
            200 << 20
        );
        // At registration: within 1..=MAX_IMAGE_DECODE_BYTES.
        for (bytes, ok) in [
            (0, false),
            (1, true),
            (MAX_IMAGE_DECODE_BYTES, true),
            (MAX_IMAGE_DECODE_BYTES + 1, false),
        ] {
            let violations = contract::processing::image::check(
                "/inputs/image/image",
                &image_spec(json!({ "max_decoded_bytes": bytes })),
            );
            assert_eq!(violations.is_empty(), ok, "{bytes}: {violations:?}");
            if !ok {
                assert_eq!(
                    violations[0].pointer,
                    "/inputs/image/image/max_decoded_bytes"
                );
            }
        }
    }
}
