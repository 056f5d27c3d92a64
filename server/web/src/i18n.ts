// Every text of the studio, in English and Spanish. The page's static text carries
// data-i18n* attributes naming these keys; code calls t(key, values).

const en = {
  "doc.title": "Son1k Studio",
  "brand.tagline": "music from words",
  "token.label": "Access token",
  "token.placeholder": "only if the server asks",
  "token.show": "Show the token",
  "token.needed": "This server needs an access token. Enter yours here; it stays in this browser.",
  "token.wrong": "This token was not accepted. Check it and try again.",
  "token.invalid": "A token has only visible ASCII characters: no spaces, accents or symbols outside A–Z, 0–9 and punctuation.",
  "tabs.label": "Studio",
  "tab.generate": "Generator",
  "tab.cover": "Ghost Studio",

  "gen.title": "Describe your track",
  "gen.lead": "Write what you want to hear: the genre, the mood, the tempo, the instruments.",
  "gen.prompt": "Prompt",
  "gen.prompt.placeholder": "Dreamy synthwave at 100 BPM in A minor, warm pads and a punchy bassline",
  "gen.submit": "Generate",

  "cover.title": "Ghost Studio",
  "cover.lead": "Give it a song and a style: it plays the song again, your way.",
  "cover.drop": "Drop a song here",
  "cover.drop.or": "or",
  "cover.drop.pick": "choose a file",
  "cover.drop.hint": "WAV, FLAC, MP3, Ogg or M4A, up to {limit}",
  "cover.file": "Song file",
  "cover.file.chosen": "{name} · {size}",
  "cover.file.length": "{name} · {size} · {duration}",
  "cover.file.tooBig": "This file is {size}; the upload limit is {limit}.",
  "cover.file.missing": "Choose a song first.",
  "cover.file.unreadable": "This file could not be read. Choose it again, or another one.",
  "cover.file.tooLong": "This song lasts {duration}; this server takes songs of up to {limit}.",
  "cover.prompt": "Style",
  "cover.prompt.placeholder": "As a bossa nova with nylon guitar and soft brushes",
  "cover.mode": "Cover mode",
  "cover.mode.melody": "Melody: the song's tune in this style",
  "cover.mode.continuation": "Continuation: a clip of the song, carried on",
  "cover.clipStart": "Clip start (s)",
  "cover.clipEnd": "Clip end (s)",
  "cover.clipStart.placeholder": "0",
  "cover.clipEnd.placeholder": "start + 10",
  "cover.duration.hint": "0 = the song's length",
  "cover.submit": "Make the cover",
  "cover.noModel": "No model on this server can make covers.",
  "cover.original": "Original",
  "cover.cover": "Cover",
  "cover.undecodable": "This browser cannot play the file, but the server may still read it.",

  "field.model": "Model",
  "field.duration": "Duration (s)",
  "field.seed": "Seed",
  "field.seed.placeholder": "random",
  "field.format": "Format",
  "field.advanced": "Advanced sampling",
  "field.advanced.hint": "Leave a field empty to use the model's default.",
  "field.topK": "Top-k",
  "field.topP": "Top-p",
  "field.temperature": "Temperature",
  "field.guidance": "Guidance scale",
  "field.default": "default",
  "field.live": "Play while it generates",

  "model.loading": "Loading the models…",
  "model.needToken": "Enter your access token to list the models.",
  "model.upTo": "up to {seconds} s",
  "model.mono": "mono",
  "model.stereo": "stereo",
  "model.channels": "{n} channels",
  "model.kHz": "{rate} kHz",
  "model.on": "on {device}",
  "cap.1": "text to music",
  "cap.2": "covers",
  "cap.3": "live preview",
  "cap.4": "melody covers",
  "cap.5": "continuation covers",

  "job.title": "Your track",
  "job.coverTitle": "Your cover",
  "job.waiting": "Sending…",
  "job.cancel": "Cancel",
  "job.progress": "Progress",
  "job.percent": "{percent} %",
  "job.eta": "about {time} left",
  "job.inLine": "{ordinal} in line",
  "job.next": "next in line",
  "job.live": "Live preview",
  "job.done": "Done.",
  "job.resumed": "Picked up your unfinished job.",
  "job.reconnecting": "Connection lost; reconnecting in {seconds} s…",
  "job.reconnectingNow": "Reconnecting…",
  "job.polling": "The live stream keeps failing; checking on the job every few seconds.",
  "job.offline": "The server cannot be reached; still trying…",
  "job.failed": "The job failed: {message}",
  "job.interrupted": "The server stopped while the job ran: {message}",
  "job.cancelled": "Cancelled.",
  "job.cancelling": "Cancelling…",
  "job.gone": "This job is no longer on the server.",
  "job.fetching": "Fetching the audio file…",
  "job.audioFailed": "Could not fetch the audio: {message}",
  "job.download": "Download {format} · {size}",
  "job.understood": "What the model understood",
  "job.seed": "Seed",
  "job.model": "Model",
  "job.duration": "Duration",
  "job.audio": "Audio",
  "job.waveform": "Waveform of {name}",
  "job.lost": "Lost the connection: {message}",
  "job.retryAudio": "Try again",
  "job.retryIn": "Trying again in {seconds} s…",

  "stage.0": "Working",
  "stage.1": "Waiting in line",
  "stage.2": "Reading the prompt",
  "stage.3": "Generating",
  "stage.4": "Decoding the audio",
  "stage.5": "Writing the file",

  "understood.genre": "Genre",
  "understood.tempo": "Tempo",
  "understood.key": "Key",
  "understood.mood": "Mood",
  "understood.instruments": "Instruments",
  "understood.scale": "Scale",
  "understood.bpm": "Tempo",
  "understood.meter": "Meter",
  "understood.tempo_bpm": "Tempo",
  "understood.progression": "Chords",

  "history.title": "History",
  "history.refresh": "Refresh",
  "history.empty": "Nothing yet. Your tracks and covers will be listed here.",
  "history.more": "Show more",
  "history.play": "Play",
  "history.loading": "Loading…",
  "history.generation": "Track",
  "history.cover": "Cover",
  "history.untitled": "(no prompt)",
  "history.locked": "Enter your access token to see your history.",
  "state.0": "Unknown",
  "state.1": "Queued",
  "state.2": "Running",
  "state.2p": "Running {percent} %",
  "state.3": "Completed",
  "state.4": "Failed",
  "state.5": "Cancelled",

  "err.unauthenticated": "The server did not accept the token.",
  "err.busy": "The queue is full; retry in {seconds} s.",
  "err.busyNow": "The queue is full; retry now.",
  "err.field": "{message}",
  "err.network": "The server cannot be reached.",
  "err.unavailable": "The server is not ready: {message}",
  "err.precondition": "{message}",
  "err.other": "{message}",
  "err.models": "Could not list the models: {message}",
  "err.history": "Could not load the history: {message}",
  "err.prompt.empty": "Write a prompt first.",
  "err.duration.range": "Enter a duration from {min} to {max} seconds.",
  "err.duration.cover": "Enter 0 (the song's length) or a duration up to {max} seconds.",
  "err.number": "Enter a number.",
  "err.seed": "Use a whole number (0 to 2⁶⁴ − 1), or leave it empty.",
  "err.clip": "Enter a time in seconds (0 or more).",
  "err.topK": "Enter a whole number from 0 to 4294967295, or leave it empty.",
  "err.client": "The request could not be sent: {message}",
  "err.audioIncomplete": "the audio file arrived incomplete",
  "err.streamEnded": "the stream ended early",

  "unit.s": "{n} s",
  "unit.min": "{m} min {s} s",
};

type Key = keyof typeof en;
type Dict = Record<Key, string>;

const es: Dict = {
  "doc.title": "Son1k Studio",
  "brand.tagline": "música a partir de palabras",
  "token.label": "Token de acceso",
  "token.placeholder": "solo si el servidor lo pide",
  "token.show": "Mostrar el token",
  "token.needed": "Este servidor necesita un token de acceso. Escríbelo aquí; se guarda en este navegador.",
  "token.wrong": "El servidor no aceptó este token. Revísalo y vuelve a intentarlo.",
  "token.invalid": "Un token solo lleva caracteres ASCII visibles: sin espacios, tildes ni símbolos fuera de A–Z, 0–9 y la puntuación.",
  "tabs.label": "Estudio",
  "tab.generate": "Generador",
  "tab.cover": "Ghost Studio",

  "gen.title": "Describe tu tema",
  "gen.lead": "Escribe lo que quieres oír: el género, el ambiente, el tempo, los instrumentos.",
  "gen.prompt": "Descripción",
  "gen.prompt.placeholder": "Synthwave soñador a 100 BPM en la menor, pads cálidos y un bajo contundente",
  "gen.submit": "Generar",

  "cover.title": "Ghost Studio",
  "cover.lead": "Dale una canción y un estilo: la vuelve a tocar a tu manera.",
  "cover.drop": "Suelta una canción aquí",
  "cover.drop.or": "o",
  "cover.drop.pick": "elige un archivo",
  "cover.drop.hint": "WAV, FLAC, MP3, Ogg o M4A, hasta {limit}",
  "cover.file": "Archivo de la canción",
  "cover.file.chosen": "{name} · {size}",
  "cover.file.length": "{name} · {size} · {duration}",
  "cover.file.tooBig": "Este archivo ocupa {size}; el límite de subida es {limit}.",
  "cover.file.missing": "Primero elige una canción.",
  "cover.file.unreadable": "No se pudo leer este archivo. Vuelve a elegirlo, o elige otro.",
  "cover.file.tooLong": "Esta canción dura {duration}; este servidor acepta canciones de hasta {limit}.",
  "cover.prompt": "Estilo",
  "cover.prompt.placeholder": "Como una bossa nova con guitarra de nailon y escobillas suaves",
  "cover.mode": "Modo de versión",
  "cover.mode.melody": "Melodía: la melodía de la canción en este estilo",
  "cover.mode.continuation": "Continuación: un fragmento de la canción, continuado",
  "cover.clipStart": "Inicio del fragmento (s)",
  "cover.clipEnd": "Fin del fragmento (s)",
  "cover.clipStart.placeholder": "0",
  "cover.clipEnd.placeholder": "inicio + 10",
  "cover.duration.hint": "0 = la duración de la canción",
  "cover.submit": "Crear la versión",
  "cover.noModel": "Ningún modelo de este servidor puede crear versiones.",
  "cover.original": "Original",
  "cover.cover": "Versión",
  "cover.undecodable": "Este navegador no puede reproducir el archivo, pero el servidor quizá sí pueda leerlo.",

  "field.model": "Modelo",
  "field.duration": "Duración (s)",
  "field.seed": "Semilla",
  "field.seed.placeholder": "aleatoria",
  "field.format": "Formato",
  "field.advanced": "Muestreo avanzado",
  "field.advanced.hint": "Deja un campo vacío para usar el valor del modelo.",
  "field.topK": "Top-k",
  "field.topP": "Top-p",
  "field.temperature": "Temperatura",
  "field.guidance": "Escala de guía",
  "field.default": "por defecto",
  "field.live": "Escuchar mientras se genera",

  "model.loading": "Cargando los modelos…",
  "model.needToken": "Escribe tu token de acceso para ver los modelos.",
  "model.upTo": "hasta {seconds} s",
  "model.mono": "mono",
  "model.stereo": "estéreo",
  "model.channels": "{n} canales",
  "model.kHz": "{rate} kHz",
  "model.on": "en {device}",
  "cap.1": "texto a música",
  "cap.2": "versiones",
  "cap.3": "escucha en directo",
  "cap.4": "versiones de melodía",
  "cap.5": "versiones por continuación",

  "job.title": "Tu tema",
  "job.coverTitle": "Tu versión",
  "job.waiting": "Enviando…",
  "job.cancel": "Cancelar",
  "job.progress": "Progreso",
  "job.percent": "{percent} %",
  "job.eta": "quedan unos {time}",
  "job.inLine": "{ordinal} en la cola",
  "job.next": "el siguiente en la cola",
  "job.live": "Escucha en directo",
  "job.done": "Listo.",
  "job.resumed": "Hemos retomado tu trabajo sin terminar.",
  "job.reconnecting": "Se perdió la conexión; reconectando en {seconds} s…",
  "job.reconnectingNow": "Reconectando…",
  "job.polling": "La transmisión en directo sigue fallando; consultamos el trabajo cada pocos segundos.",
  "job.offline": "No se puede contactar con el servidor; seguimos intentándolo…",
  "job.failed": "El trabajo falló: {message}",
  "job.interrupted": "El servidor se detuvo durante el trabajo: {message}",
  "job.cancelled": "Cancelado.",
  "job.cancelling": "Cancelando…",
  "job.gone": "Este trabajo ya no está en el servidor.",
  "job.fetching": "Descargando el archivo de audio…",
  "job.audioFailed": "No se pudo descargar el audio: {message}",
  "job.download": "Descargar {format} · {size}",
  "job.understood": "Lo que entendió el modelo",
  "job.seed": "Semilla",
  "job.model": "Modelo",
  "job.duration": "Duración",
  "job.audio": "Audio",
  "job.waveform": "Forma de onda de {name}",
  "job.lost": "Se perdió la conexión: {message}",
  "job.retryAudio": "Reintentar",
  "job.retryIn": "Reintentando en {seconds} s…",

  "stage.0": "Trabajando",
  "stage.1": "Esperando en la cola",
  "stage.2": "Leyendo la descripción",
  "stage.3": "Generando",
  "stage.4": "Decodificando el audio",
  "stage.5": "Escribiendo el archivo",

  "understood.genre": "Género",
  "understood.tempo": "Tempo",
  "understood.key": "Tonalidad",
  "understood.mood": "Ambiente",
  "understood.instruments": "Instrumentos",
  "understood.scale": "Escala",
  "understood.bpm": "Tempo",
  "understood.meter": "Compás",
  "understood.tempo_bpm": "Tempo",
  "understood.progression": "Acordes",

  "history.title": "Historial",
  "history.refresh": "Actualizar",
  "history.empty": "Aún no hay nada. Aquí aparecerán tus temas y versiones.",
  "history.more": "Ver más",
  "history.play": "Escuchar",
  "history.loading": "Cargando…",
  "history.generation": "Tema",
  "history.cover": "Versión",
  "history.untitled": "(sin descripción)",
  "history.locked": "Escribe tu token de acceso para ver tu historial.",
  "state.0": "Desconocido",
  "state.1": "En cola",
  "state.2": "En curso",
  "state.2p": "En curso {percent} %",
  "state.3": "Completado",
  "state.4": "Fallido",
  "state.5": "Cancelado",

  "err.unauthenticated": "El servidor no aceptó el token.",
  "err.busy": "La cola está llena; reintenta en {seconds} s.",
  "err.busyNow": "La cola está llena; reintenta ahora.",
  "err.field": "{message}",
  "err.network": "No se puede contactar con el servidor.",
  "err.unavailable": "El servidor no está listo: {message}",
  "err.precondition": "{message}",
  "err.other": "{message}",
  "err.models": "No se pudieron cargar los modelos: {message}",
  "err.history": "No se pudo cargar el historial: {message}",
  "err.prompt.empty": "Primero escribe una descripción.",
  "err.duration.range": "Escribe una duración de {min} a {max} segundos.",
  "err.duration.cover": "Escribe 0 (la duración de la canción) o una duración de hasta {max} segundos.",
  "err.number": "Escribe un número.",
  "err.seed": "Usa un número entero (de 0 a 2⁶⁴ − 1) o déjalo vacío.",
  "err.clip": "Escribe un tiempo en segundos (0 o más).",
  "err.topK": "Escribe un número entero de 0 a 4294967295, o déjalo vacío.",
  "err.client": "No se pudo enviar la petición: {message}",
  "err.audioIncomplete": "el archivo de audio llegó incompleto",
  "err.streamEnded": "la transmisión terminó antes de tiempo",

  "unit.s": "{n} s",
  "unit.min": "{m} min {s} s",
};

export type Lang = "en" | "es";

/** The first of the reader's languages that the studio speaks; English otherwise. */
export function pickLang(langs: readonly string[]): Lang {
  for (const l of langs) {
    const base = l.toLowerCase().split("-")[0];
    if (base === "es") return "es";
    if (base === "en") return "en";
  }
  return "en";
}

export const lang: Lang = pickLang(
  typeof navigator === "undefined" ? [] : navigator.languages?.length ? navigator.languages : [navigator.language || "en"],
);
const dict: Dict = lang === "es" ? es : en;

export function has(key: string): key is Key {
  return Object.hasOwn(dict, key) || Object.hasOwn(en, key);
}

/**
 * The text for `key`, with `{name}` replaced by values[name]. A key this build lacks (say, a
 * newer server's enum value) falls back to English, then to the key itself: it never throws.
 */
export function t(key: Key, values: Record<string, string | number> = {}): string {
  const text: string = Object.hasOwn(dict, key) ? dict[key] : Object.hasOwn(en, key) ? en[key] : String(key);
  return text.replace(/\{(\w+)\}/g, (_, name: string) => (name in values ? String(values[name]) : `{${name}}`));
}

/** Fills the static page: data-i18n (text), data-i18n-placeholder, data-i18n-label (aria-label). */
export function translatePage(root: ParentNode = document): void {
  document.documentElement.lang = lang;
  document.title = t("doc.title");
  for (const el of root.querySelectorAll<HTMLElement>("[data-i18n]")) el.textContent = t(el.dataset.i18n as Key);
  for (const el of root.querySelectorAll<HTMLInputElement>("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder as Key);
  }
  for (const el of root.querySelectorAll<HTMLElement>("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel as Key));
  }
}

const numberFormat = new Intl.NumberFormat(lang, { maximumFractionDigits: 1 });
export const fmtNumber = (n: number): string => numberFormat.format(n);

/** "3rd" / "3.º". */
export function ordinal(n: number): string {
  if (lang === "es") return `${n}.º`;
  const rules = new Intl.PluralRules("en", { type: "ordinal" });
  const suffix = { one: "st", two: "nd", few: "rd", other: "th" }[rules.select(n) as "one" | "two" | "few" | "other"] ?? "th";
  return `${n}${suffix}`;
}

/** 75 → "1 min 15 s"; 12.4 → "12 s". */
export function seconds(s: number): string {
  if (!Number.isFinite(s)) return "";
  const r = Math.max(0, Math.round(s));
  return r >= 60 ? t("unit.min", { m: Math.floor(r / 60), s: r % 60 }) : t("unit.s", { n: r });
}

/** A duration with its fraction: 8 → "8 s", 7.5 → "7.5 s". */
export function exactSeconds(s: number): string {
  return t("unit.s", { n: fmtNumber(s) });
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${fmtNumber(n / 1024)} KiB`;
  return `${fmtNumber(n / (1024 * 1024))} MiB`;
}

const timeFormat = new Intl.DateTimeFormat(lang, { dateStyle: "short", timeStyle: "short" });
export const fmtTime = (ms: number): string => timeFormat.format(new Date(ms));

export type { Key };
