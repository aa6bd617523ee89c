//! Expansion of each `<image>` marker into the image's token layout (SPEC §6).

use crate::error::{DataError, Result};

/// The special-token strings of the image layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageTokens {
    /// `<fake_token_around_image>`.
    pub fake: String,
    /// `<image>`.
    pub image: String,
    /// `<global-img>`.
    pub global: String,
}

impl Default for ImageTokens {
    fn default() -> Self {
        Self {
            fake: "<fake_token_around_image>".into(),
            image: "<image>".into(),
            global: "<global-img>".into(),
        }
    }
}

impl ImageTokens {
    /// The text one image becomes: a grid of `rows × cols` tiles (each
    /// `fake <row_r_col_c> image×S`, a newline after each row) then `"\n"` and the global
    /// image `fake global image×S fake`; unsplit images are just the global block.
    pub fn expand(&self, rows: usize, cols: usize, seq_len: usize) -> String {
        let images = self.image.repeat(seq_len);
        let global = format!("{}{}{}{}", self.fake, self.global, images, self.fake);
        if rows == 0 && cols == 0 {
            return global;
        }
        let mut text = String::new();
        for r in 1..=rows {
            for c in 1..=cols {
                text.push_str(&format!("{}<row_{r}_col_{c}>{images}", self.fake));
            }
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&global);
        text
    }

    /// Replaces the `<image>` markers of `text` in order; `grids[i]` is `(rows, cols)` of the
    /// i-th image. The numbers of markers and images must agree.
    pub fn expand_text(
        &self,
        text: &str,
        grids: &[(usize, usize)],
        seq_len: usize,
    ) -> Result<String> {
        let parts: Vec<&str> = text.split(self.image.as_str()).collect();
        let markers = parts.len() - 1;
        if markers != grids.len() {
            return Err(DataError::Mismatch(format!(
                "the text has {markers} `{}` marker(s) but {} image(s) were given",
                self.image,
                grids.len()
            )));
        }
        let mut out =
            String::with_capacity(text.len() + grids.len() * seq_len * self.image.len() * 8);
        for (i, part) in parts.iter().enumerate() {
            out.push_str(part);
            if let Some((rows, cols)) = grids.get(i) {
                out.push_str(&self.expand(*rows, *cols, seq_len));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_layout_has_double_newline_before_global() {
        let t = ImageTokens::default();
        let s = t.expand(1, 2, 1);
        assert_eq!(
            s,
            "<fake_token_around_image><row_1_col_1><image><fake_token_around_image><row_1_col_2><image>\n\n<fake_token_around_image><global-img><image><fake_token_around_image>"
        );
        assert_eq!(
            t.expand(0, 0, 2),
            "<fake_token_around_image><global-img><image><image><fake_token_around_image>"
        );
    }

    #[test]
    fn marker_count_must_match() {
        let t = ImageTokens::default();
        let err = t
            .expand_text("<image><image>hi", &[(0, 0)], 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 `<image>` marker(s) but 1 image(s)"),
            "{err}"
        );
        assert!(t.expand_text("hi", &[(0, 0)], 4).is_err());
    }
}
