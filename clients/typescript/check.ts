// Compile-time checks that the generated types describe real messages (tsc --noEmit).
import type { ClientMessage, ServerMessage } from "./protocol";

const ping: ClientMessage = { type: "ping" };
const mute: ClientMessage = { type: "mute", muted: true };
const restart: ClientMessage = { type: "ice_restart" };
const ended: ServerMessage = { type: "session_ended", reason: "ended by the Veza API" };
const grants: ServerMessage = {
  type: "grants_changed",
  grants: { publish: true, subscribe: true, chat: true, record: false },
};

export function describe(m: ServerMessage): string {
  switch (m.type) {
    case "joined":
      return `joined ${m.session_id} as ${m.participant.id}`;
    case "participant_left":
      return `${m.participant_id} left (${m.reason})`;
    case "grants_changed":
      return m.grants.publish ? "you may publish" : "listening only";
    default:
      return m.type;
  }
}

export const samples = [ping, mute, restart, ended, grants];
