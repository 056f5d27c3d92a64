//! Prompt understanding for the synth: genre and style words, mood, explicit tempo and
//! key, instruments, in English and Spanish. Unknown words are ignored; what was understood
//! is reported back to the user.

use crate::theory::{Key, Mode};

/// A musical style the synth composes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Genre {
    /// Lo-fi hip hop: dusty, swung, mellow keys.
    Lofi,
    /// Boom-bap hip hop.
    HipHop,
    /// Rock: driving eighths, power chords.
    Rock,
    /// Pop: four-chord progressions, bright lead.
    Pop,
    /// Jazz: swing, seventh chords, walking bass.
    Jazz,
    /// Ambient: slow pads, no drums.
    Ambient,
    /// Electronic / house: four on the floor.
    House,
    /// Techno: faster, darker four on the floor.
    Techno,
    /// Cinematic / orchestral: strings, slow build.
    Cinematic,
    /// Reggaeton: dembow rhythm.
    Reggaeton,
    /// Trap: half-time drums, rolling hi-hats, 808 bass.
    Trap,
    /// Classical: piano and strings, no drums.
    Classical,
    /// Funk: syncopated bass, sixteenth hi-hats.
    Funk,
}

impl Genre {
    /// Every genre, for listings.
    pub const ALL: [Genre; 13] = [
        Genre::Lofi,
        Genre::HipHop,
        Genre::Rock,
        Genre::Pop,
        Genre::Jazz,
        Genre::Ambient,
        Genre::House,
        Genre::Techno,
        Genre::Cinematic,
        Genre::Reggaeton,
        Genre::Trap,
        Genre::Classical,
        Genre::Funk,
    ];

    /// The lowercase name reported to users.
    pub fn name(self) -> &'static str {
        match self {
            Genre::Lofi => "lofi",
            Genre::HipHop => "hip hop",
            Genre::Rock => "rock",
            Genre::Pop => "pop",
            Genre::Jazz => "jazz",
            Genre::Ambient => "ambient",
            Genre::House => "house",
            Genre::Techno => "techno",
            Genre::Cinematic => "cinematic",
            Genre::Reggaeton => "reggaeton",
            Genre::Trap => "trap",
            Genre::Classical => "classical",
            Genre::Funk => "funk",
        }
    }
}

/// The feeling of the piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mood {
    /// Major, brighter, a little faster.
    Happy,
    /// Minor, slower.
    Sad,
    /// Minor, low register.
    Dark,
    /// Slower, softer.
    Calm,
    /// Bigger, more layers.
    Epic,
    /// Faster, busier.
    Energetic,
    /// Major, warm.
    Romantic,
}

impl Mood {
    /// The lowercase name reported to users.
    pub fn name(self) -> &'static str {
        match self {
            Mood::Happy => "happy",
            Mood::Sad => "sad",
            Mood::Dark => "dark",
            Mood::Calm => "calm",
            Mood::Epic => "epic",
            Mood::Energetic => "energetic",
            Mood::Romantic => "romantic",
        }
    }
}

/// An instrument a prompt can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Instrument {
    /// Drum kit.
    Drums,
    /// Bass (electric or synth, by genre).
    Bass,
    /// Acoustic piano.
    Piano,
    /// Electric piano.
    ElectricPiano,
    /// Plucked guitar.
    Guitar,
    /// String ensemble.
    Strings,
    /// Synth pad.
    Pad,
    /// Synth lead.
    Lead,
    /// Organ.
    Organ,
}

impl Instrument {
    /// The lowercase name reported to users.
    pub fn name(self) -> &'static str {
        match self {
            Instrument::Drums => "drums",
            Instrument::Bass => "bass",
            Instrument::Piano => "piano",
            Instrument::ElectricPiano => "electric piano",
            Instrument::Guitar => "guitar",
            Instrument::Strings => "strings",
            Instrument::Pad => "pad",
            Instrument::Lead => "lead",
            Instrument::Organ => "organ",
        }
    }
}

/// What the synth read from a prompt.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Understanding {
    /// The style, if named.
    pub genre: Option<Genre>,
    /// The mood, if named.
    pub mood: Option<Mood>,
    /// An explicit tempo in beats per minute.
    pub tempo_bpm: Option<f32>,
    /// An explicit key.
    pub key: Option<Key>,
    /// Instruments named, in order of first mention.
    pub instruments: Vec<Instrument>,
}

/// Slowest and fastest tempo a prompt may set.
pub const TEMPO_RANGE_BPM: (f32, f32) = (40.0, 220.0);

/// Lowercases, strips accents and splits a prompt into words; `#` stays inside words
/// ("f#"), and a number glued to "bpm" is split from it.
fn words(prompt: &str) -> Vec<String> {
    let folded: String = prompt
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'á' | 'à' | 'ä' | 'â' => 'a',
            'é' | 'è' | 'ë' | 'ê' => 'e',
            'í' | 'ì' | 'ï' | 'î' => 'i',
            'ó' | 'ò' | 'ö' | 'ô' => 'o',
            'ú' | 'ù' | 'ü' | 'û' => 'u',
            'ñ' => 'n',
            '♯' => '#',
            '♭' => 'b',
            c => c,
        })
        .collect();
    let mut out = Vec::new();
    for raw in folded.split(|c: char| !(c.is_alphanumeric() || c == '#' || c == '.')) {
        let word = raw.trim_matches('.');
        if word.is_empty() {
            continue;
        }
        match word.strip_suffix("bpm") {
            Some(number)
                if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.') =>
            {
                out.push(number.to_string());
                out.push("bpm".to_string());
            }
            _ => out.push(word.to_string()),
        }
    }
    out
}

fn genre_of(word: &str, next: Option<&str>) -> Option<(Genre, usize)> {
    let two = next.map(|n| format!("{word} {n}"));
    if let Some(two) = two.as_deref() {
        let g = match two {
            "hip hop" => Some(Genre::HipHop),
            "lo fi" => Some(Genre::Lofi),
            "boom bap" => Some(Genre::HipHop),
            "deep house" => Some(Genre::House),
            _ => None,
        };
        if let Some(g) = g {
            return Some((g, 2));
        }
    }
    let g = match word {
        "lofi" | "chillhop" => Genre::Lofi,
        "hiphop" | "rap" | "boombap" => Genre::HipHop,
        "rock" | "grunge" | "punk" | "metal" | "rockero" | "rockera" => Genre::Rock,
        "pop" => Genre::Pop,
        "jazz" | "jazzy" | "swing" | "bebop" => Genre::Jazz,
        "ambient" | "ambiental" | "atmospheric" | "atmosferica" | "atmosferico" | "drone" => {
            Genre::Ambient
        }
        "electronic" | "electronica" | "electronico" | "edm" | "house" | "dance" => Genre::House,
        "techno" | "tecno" => Genre::Techno,
        "cinematic" | "cinematica" | "cinematografica" | "cinematografico" | "orchestral"
        | "orquestal" | "epic orchestral" | "soundtrack" | "film" | "trailer" => Genre::Cinematic,
        "reggaeton" | "regueton" | "reguetón" | "dembow" | "perreo" | "urbano" => Genre::Reggaeton,
        "trap" | "drill" => Genre::Trap,
        "classical" | "clasica" | "clasico" | "baroque" | "barroco" | "sonata" => Genre::Classical,
        "funk" | "funky" | "disco" => Genre::Funk,
        _ => return None,
    };
    Some((g, 1))
}

fn mood_of(word: &str) -> Option<Mood> {
    Some(match word {
        "happy" | "joyful" | "cheerful" | "upbeat" | "bright" | "sunny" | "feliz" | "alegre"
        | "alegria" => Mood::Happy,
        "sad" | "melancholic" | "melancholy" | "sorrowful" | "triste" | "melancolico"
        | "melancolica" | "nostalgic" | "nostalgico" | "nostalgica" => Mood::Sad,
        "dark" | "sinister" | "ominous" | "oscuro" | "oscura" | "sombrio" | "sombria" => Mood::Dark,
        "calm" | "chill" | "relaxing" | "relaxed" | "peaceful" | "mellow" | "soft"
        | "tranquilo" | "tranquila" | "calmado" | "calmada" | "relajado" | "relajada"
        | "relajante" | "suave" => Mood::Calm,
        "epic" | "heroic" | "grand" | "powerful" | "epico" | "epica" | "heroico" | "heroica" => {
            Mood::Epic
        }
        "energetic" | "energy" | "fast" | "intense" | "aggressive" | "energico" | "energica"
        | "rapido" | "rapida" | "intenso" | "intensa" => Mood::Energetic,
        "romantic" | "love" | "warm" | "romantico" | "romantica" | "amor" => Mood::Romantic,
        _ => return None,
    })
}

fn instrument_of(word: &str, next: Option<&str>) -> Option<(Instrument, usize)> {
    if let Some(next) = next {
        let g = match (word, next) {
            ("electric", "piano") | ("piano", "electrico") | ("e", "piano") => {
                Some(Instrument::ElectricPiano)
            }
            ("synth", "pad") | ("pad", "sintetizado") => Some(Instrument::Pad),
            ("synth", "lead") => Some(Instrument::Lead),
            ("string", "section") => Some(Instrument::Strings),
            _ => None,
        };
        if let Some(g) = g {
            return Some((g, 2));
        }
    }
    let i = match word {
        "drums" | "drum" | "beat" | "beats" | "percussion" | "bateria" | "percusion"
        | "tambores" => Instrument::Drums,
        "bass" | "bassline" | "808" | "808s" | "bajo" | "contrabajo" => Instrument::Bass,
        "piano" | "pianos" | "keys" | "teclado" | "teclados" => Instrument::Piano,
        "rhodes" | "epiano" | "wurlitzer" => Instrument::ElectricPiano,
        "guitar" | "guitars" | "guitarra" | "guitarras" | "acoustic" | "acustica" => {
            Instrument::Guitar
        }
        "strings" | "violin" | "violins" | "cello" | "viola" | "cuerdas" | "violines"
        | "orchestra" | "orquesta" => Instrument::Strings,
        "pad" | "pads" | "atmosphere" => Instrument::Pad,
        "synth" | "synths" | "lead" | "sintetizador" | "sintetizadores" | "synthesizer" => {
            Instrument::Lead
        }
        "organ" | "organo" => Instrument::Organ,
        _ => return None,
    };
    Some((i, 1))
}

/// Pitch class of a note name: English letters (with `#`/`b`) or Spanish solfège.
fn pitch_class_of(word: &str) -> Option<u8> {
    let (base, rest) = if let Some(rest) = word.strip_prefix("sol") {
        (7, rest)
    } else {
        let solfege = [
            ("do", 0),
            ("re", 2),
            ("mi", 4),
            ("fa", 5),
            ("la", 9),
            ("si", 11),
        ];
        match solfege.iter().find(|(name, _)| word.starts_with(name)) {
            Some((name, pc)) => (*pc, &word[name.len()..]),
            None => {
                let mut chars = word.chars();
                let pc = match chars.next()? {
                    'c' => 0,
                    'd' => 2,
                    'e' => 4,
                    'f' => 5,
                    'g' => 7,
                    'a' => 9,
                    'b' => 11,
                    _ => return None,
                };
                (pc, chars.as_str())
            }
        }
    };
    let shift: i8 = match rest {
        "" => 0,
        "#" | "sharp" | "sostenido" => 1,
        "b" | "flat" | "bemol" => -1,
        _ => return None,
    };
    Some(((base as i8 + shift).rem_euclid(12)) as u8)
}

fn mode_of(word: &str) -> Option<Mode> {
    match word {
        "major" | "maj" | "mayor" => Some(Mode::Major),
        "minor" | "min" | "menor" => Some(Mode::Minor),
        _ => None,
    }
}

/// Reads a prompt.
pub fn understand(prompt: &str) -> Understanding {
    let words = words(prompt);
    let mut u = Understanding::default();
    let mut i = 0;
    while i < words.len() {
        let word = words[i].as_str();
        let next = words.get(i + 1).map(String::as_str);
        let after = words.get(i + 2).map(String::as_str);
        // Tempo: "92 bpm", "92bpm", "tempo 92", "bpm 92".
        if let Ok(value) = word.parse::<f32>() {
            if next == Some("bpm") && (TEMPO_RANGE_BPM.0..=TEMPO_RANGE_BPM.1).contains(&value) {
                u.tempo_bpm = Some(value);
                i += 2;
                continue;
            }
        }
        if matches!(word, "tempo" | "bpm") {
            if let Some(value) = next.and_then(|n| n.parse::<f32>().ok()) {
                if (TEMPO_RANGE_BPM.0..=TEMPO_RANGE_BPM.1).contains(&value) {
                    u.tempo_bpm = Some(value);
                    i += 2;
                    continue;
                }
            }
        }
        // Key: a note name followed by a mode word; "sharp"/"flat" may stand apart.
        if let Some(pc) = pitch_class_of(word) {
            let (pc, mode_word, used) = match (next, after) {
                (Some(accidental @ ("sharp" | "flat" | "sostenido" | "bemol" | "#")), Some(m)) => {
                    let shift = if matches!(accidental, "sharp" | "sostenido" | "#") {
                        1
                    } else {
                        11
                    };
                    ((pc + shift) % 12, Some(m), 3)
                }
                (m, _) => (pc, m, 2),
            };
            if let Some(mode) = mode_word.and_then(mode_of) {
                u.key = Some(Key { tonic: pc, mode });
                i += used;
                continue;
            }
        }
        if let Some((genre, used)) = genre_of(word, next) {
            u.genre.get_or_insert(genre);
            i += used;
            continue;
        }
        if let Some((instrument, used)) = instrument_of(word, next) {
            if !u.instruments.contains(&instrument) {
                u.instruments.push(instrument);
            }
            i += used;
            continue;
        }
        if let Some(mood) = mood_of(word) {
            u.mood.get_or_insert(mood);
        }
        i += 1;
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_prompt_with_everything() {
        let u =
            understand("A sad lofi hip hop beat at 92 BPM in D minor with piano and soft drums");
        assert_eq!(u.genre, Some(Genre::Lofi));
        assert_eq!(u.mood, Some(Mood::Sad));
        assert_eq!(u.tempo_bpm, Some(92.0));
        assert_eq!(
            u.key,
            Some(Key {
                tonic: 2,
                mode: Mode::Minor
            })
        );
        assert_eq!(u.instruments, vec![Instrument::Drums, Instrument::Piano]);
    }

    #[test]
    fn spanish_prompts() {
        let u = understand("reggaetón triste con piano");
        assert_eq!(u.genre, Some(Genre::Reggaeton));
        assert_eq!(u.mood, Some(Mood::Sad));
        assert_eq!(u.instruments, vec![Instrument::Piano]);
        let u = understand("rock épico en la menor a 140bpm con guitarras y batería");
        assert_eq!(u.genre, Some(Genre::Rock));
        assert_eq!(u.mood, Some(Mood::Epic));
        assert_eq!(
            u.key,
            Some(Key {
                tonic: 9,
                mode: Mode::Minor
            })
        );
        assert_eq!(u.tempo_bpm, Some(140.0));
        assert_eq!(u.instruments, vec![Instrument::Guitar, Instrument::Drums]);
        let u = understand("balada en fa sostenido mayor, cuerdas y bajo");
        assert_eq!(
            u.key,
            Some(Key {
                tonic: 6,
                mode: Mode::Major
            })
        );
        assert_eq!(u.instruments, vec![Instrument::Strings, Instrument::Bass]);
    }

    #[test]
    fn keys_tempos_and_unknown_words() {
        assert_eq!(
            understand("F# major synth pad").key,
            Some(Key {
                tonic: 6,
                mode: Mode::Major
            })
        );
        assert_eq!(
            understand("in Bb minor").key,
            Some(Key {
                tonic: 10,
                mode: Mode::Minor
            })
        );
        assert_eq!(
            understand("E flat major").key,
            Some(Key {
                tonic: 3,
                mode: Mode::Major
            })
        );
        assert_eq!(understand("tempo 128 techno").tempo_bpm, Some(128.0));
        // Articles are not keys, out-of-range tempos are ignored, gibberish is ignored.
        let u = understand("a song about la vida at 900 bpm, flibbertigibbet");
        assert_eq!(u, Understanding::default());
    }
}
