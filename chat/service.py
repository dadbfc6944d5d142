"""The conversation service: what the window can do with conversations, as a narrow async API (no Qt).

A reply runs as a task that feeds a queue; the caller iterates the events. ``stop`` cancels the task, which keeps
the partial reply. Regenerate and edit-and-resend fork the thread at the input checkpoint of the user message
concerned, so the old branch stays in history and the new one becomes the conversation's latest state.

A new conversation is stored with its first message and nothing before it: its title (and a model chosen before it
existed) wait in ``_after_message`` until a stored checkpoint holds the message, so a kill at any moment leaves no
titled conversation without its words. The list shows a conversation without a title under its first message, and
leaves out one whose checkpoints hold no message yet (the first checkpoint of a run comes a moment before the
message it carries): see docs/DESIGN.md, "A conversation is born with its first message".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig

from chat.endpoints import Endpoint, ModelListError, chat_model, list_models
from chat.errors import describe_model_error, rate_limit_wait
from chat.events import ChatEvent, ReplyDone, ReplyFailed, Thinking, Token
from chat.graph import MODEL_NODE, STREAM_TIMES, ChatContext, build_chat_graph
from chat.state import created_stamp, with_id
from chat.thinking import REASONING, InlineThinking, reasoning_of
from storage.backends import Conversation
from storage.changes import Changes
from storage.factory import Storage
from storage.schema import checkpoint_time
from storage.tiered import check_thread_id

log = logging.getLogger("cairn.chat")

TITLE_LENGTH = 60
STOP_SETTLE_SECONDS = 10.0
"""After a Stop: how long at most to wait for the run's last checkpoints to land (see StorageManager.writes_settled)."""
LIST_MODELS_TIMEOUT = 10.0
ModelLister = Callable[..., Awaitable[list[str]]]
Role = Literal["user", "assistant", "system"]


@dataclass(frozen=True)
class ChatMessage:
    id: str
    role: Role
    text: str
    stopped: bool = False
    created: float | None = None
    """When it was made (seconds since the epoch); None for messages from before Cairn stamped them."""
    reasoning: str = ""
    """A thinking model's reasoning before this reply (chat/thinking.py): shown folded, never sent back."""
    thinking_seconds: float | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens the server counted (``stream_options.include_usage``) and the seconds the reply took to stream."""

    input_tokens: int
    output_tokens: int
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float | None:
        return self.output_tokens / self.seconds if self.seconds > 0 and self.output_tokens else None

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.seconds + other.seconds,
        )


def _usage(message: BaseMessage) -> Usage | None:
    counted = getattr(message, "usage_metadata", None)
    if not counted:
        return None
    times = message.response_metadata.get(STREAM_TIMES) or {}
    seconds = float(times.get("thinking", 0.0)) + float(times.get("writing", 0.0))
    return Usage(int(counted.get("input_tokens", 0)), int(counted.get("output_tokens", 0)), seconds)


def _thinking_seconds(message: BaseMessage) -> float | None:
    times = message.response_metadata.get(STREAM_TIMES) or {}
    seconds = times.get("thinking")
    return float(seconds) if seconds else None


@dataclass(frozen=True)
class Versions:
    """The versions of one message of the branch shown: an edit, a regenerate, or a turn taken on another device
    from the same point. ``index`` (from 1) is the one shown; ``checkpoints[i]`` shows version ``i + 1`` (the newest
    branch holding it), in the order they were made."""

    index: int
    checkpoints: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.checkpoints)


@dataclass(frozen=True)
class ConversationView:
    thread_id: str
    title: str
    messages: list[ChatMessage]
    awaiting_reply: bool
    """The last user message has no reply (the model call failed or was stopped before any token): offer Retry."""
    other_branches: int = 0
    """Other versions of the conversation, kept and not shown: an edit or a regenerate, or turns taken on two
    devices at once while they could not reach each other."""
    checkpoint_id: str = ""
    """The checkpoint shown: a message sent from this view continues it (``send(..., at=)``)."""
    versions: dict[str, Versions] = field(default_factory=dict)
    """For each message shown that has other versions (by message id): which one it is and how to show the others."""
    usage: Usage | None = None
    """The tokens of the replies shown, added up (None when the server counted none)."""


_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
_SURROGATE = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(text: str) -> str:
    """``text`` with lone UTF-16 surrogates dropped (a paste can carry half of an emoji): the model call cannot
    encode them and no database can store them. A high and a low surrogate side by side are first joined into the
    character they spell; everything else, emoji and zero-width-joiner sequences included, is left as it is."""
    if _SURROGATE.search(text) is None:
        return text
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return _SURROGATE.sub("", joined)


def _without_controls(text: str) -> str:
    """``text`` with control characters removed, tabs as spaces and every line break as ``\\n``.

    Only controls (and lone surrogates, which no database can store) go: format characters such as the zero-width
    joiner of 👩‍💻 or the right-to-left mark, and spaces such as U+00A0, are part of the text.
    """
    out = []
    for ch in text:
        if ch in _LINE_BREAKS:
            out.append("\n")
        elif ch == "\t":
            out.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cs"):
            out.append(ch)
    return "".join(out)


def make_title(text: str) -> str:
    """A title from the first message: its first non-empty line, without control characters, at most 60 chars."""
    first = next((line.strip() for line in _without_controls(text).split("\n") if line.strip()), "")
    if len(first) > TITLE_LENGTH:
        first = first[: TITLE_LENGTH - 1].rstrip() + "…"
    return first or "New conversation"


def clean_title(title: str) -> str:
    return " ".join(_without_controls(title).split())[:200]


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)


def _role(message: BaseMessage) -> Role:
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, SystemMessage):
        return "system"
    return "assistant"


class ConversationService:
    def __init__(
        self,
        storage: Storage,
        endpoint: Endpoint,
        *,
        model_factory: Callable[[Endpoint], BaseChatModel] = chat_model,
        model_lister: ModelLister = list_models,
    ) -> None:
        self.storage = storage
        self.manager = storage.manager
        self.saver = storage.saver
        self.graph = build_chat_graph(storage.saver)
        self.endpoint = endpoint
        self._model_factory = model_factory
        self._model_lister = model_lister
        self._models: dict[Endpoint, BaseChatModel] = {}
        # _model_for fills the cache on the model thread (chat.offload) while set_endpoint clears it on the loop's.
        self._models_lock = threading.Lock()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._answering: set[str] = set()
        """Runs whose model call has begun: the user's message is stored, so Stop may cancel at once."""
        self._stop_requested: set[str] = set()
        """Runs stopped before their model call began: they stop as soon as it begins (the message is kept)."""
        self._after_message: dict[str, dict[str, Any]] = {}
        """Index fields (title, model...) of conversations whose message is not stored yet: written once a stored
        checkpoint holds it, never before (an index row written first would list an empty conversation after a
        kill)."""
        self._index_lock = asyncio.Lock()  # index writes of this service, in the order they were asked for
        self._derived_titles: dict[str, str] = {}  # untitled conversations: the title their first message gives

    # --- settings -------------------------------------------------------------------------------------------
    def set_endpoint(self, endpoint: Endpoint) -> None:
        """Apply new model settings; the next reply uses them (no restart)."""
        self.endpoint = endpoint
        with self._models_lock:
            self._models.clear()

    async def pick_first_model(self) -> str:
        """No model is chosen: use the server's first, in the server's order (not the sorted one of the menus), as
        the setting's description promises; the model in use afterwards. Asked again at each send while none is
        chosen, so a server started after the app is enough. ModelListError (``ServerUnreachable`` when nothing
        answers) or LookupError (it lists none) when there is none to pick."""
        endpoint = self.endpoint
        if endpoint.model:
            return endpoint.model
        timeout = min(endpoint.first_token_timeout, LIST_MODELS_TIMEOUT)
        models = await self._model_lister(endpoint.base_url, endpoint.api_key, timeout=timeout, sort=False)
        if not models:
            raise LookupError(
                f"No model is chosen and the server at {endpoint.base_url} offers none: pick one in Settings → Model"
            )
        if not self.endpoint.model and self.endpoint.base_url == endpoint.base_url:  # settings may have changed
            self.set_endpoint(replace(self.endpoint, model=models[0]))
        return self.endpoint.model or models[0]

    def _model_for(self, conversation_model: str, no_model: Exception | None = None) -> BaseChatModel:
        endpoint = self.endpoint
        if conversation_model:
            endpoint = replace(endpoint, model=conversation_model)
        if not endpoint.model:
            if no_model is not None:
                raise no_model  # why no first model could be picked (ModelListError, LookupError)
            raise LookupError("No model is chosen: pick one in Settings → Model")
        with self._models_lock:
            model = self._models.get(endpoint)
            if model is None:
                model = self._models[endpoint] = self._model_factory(endpoint)
            return model

    # --- listing --------------------------------------------------------------------------------------------
    @staticmethod
    def new_thread_id() -> str:
        """An id for a new conversation; nothing is stored until its first message."""
        return str(uuid.uuid4())

    async def conversations(self) -> list[Conversation]:
        """The list: an untitled conversation under its first message, and none whose checkpoints hold no message."""
        shown = []
        for row in await self.manager.conversations():
            if not row.title:
                title = await self._title_from_messages(row.thread_id)
                if title is None:
                    continue
                row = replace(row, title=title) if title else row
            shown.append(row)
        return shown

    async def _title_from_messages(self, thread_id: str) -> str | None:
        """The title an untitled conversation's first message gives; None when its stored checkpoints hold no
        message (a run killed between its first checkpoint and the message's write; or a run in flight: checked
        again on the next list), "" when none can be read now (its checkpoints live in a tier not reachable now:
        listed, untitled, rather than hidden)."""
        title = self._derived_titles.get(thread_id)
        if title is not None:
            return title
        state = await self.graph.aget_state(self._config(thread_id))
        messages = state.values.get("messages", [])
        if not messages:
            return None if state.config else ""
        first = next((m for m in messages if isinstance(m, HumanMessage)), None)
        title = make_title(_text(first)) if first is not None else ""
        self._derived_titles[thread_id] = title
        return title

    async def _row(self, thread_id: str) -> Conversation | None:
        """The conversation's index row as stored (no title derived)."""
        return await self.manager.conversation(thread_id)

    async def search(self, text: str) -> list[Conversation]:
        """Conversations whose title or messages contain ``text`` (case-insensitive)."""
        needle = text.strip().casefold()
        conversations = await self.conversations()
        if not needle:
            return conversations
        # The storage search looks into the serialized messages, so it also matches their field names ("content",
        # "human", "model_name", ...) and older branches: a hit is only a candidate until its messages say so.
        hits = await self.manager.search_messages(text.strip())
        result = []
        for conversation in conversations:
            if needle in conversation.title.casefold() or (
                conversation.thread_id in hits and await self._messages_contain(conversation.thread_id, needle)
            ):
                result.append(conversation)
        return result

    async def _messages_contain(self, thread_id: str, needle: str) -> bool:
        state = await self.graph.aget_state(self._config(thread_id))
        return any(needle in _text(m).casefold() for m in state.values.get("messages", []))

    async def conversation(self, thread_id: str) -> Conversation | None:
        """The conversation's index row, an untitled one with the title its first message gives."""
        row = await self._row(thread_id)
        if row is None or row.title:
            return row
        title = await self._title_from_messages(thread_id)
        return replace(row, title=title) if title else row

    async def load(self, thread_id: str, at: str | None = None) -> ConversationView:
        """The conversation as of checkpoint ``at`` (a reply's own result), or its newest."""
        check_thread_id(thread_id)
        state = await self.graph.aget_state(self._config(thread_id, at))
        stored = state.values.get("messages", [])
        messages = [
            ChatMessage(
                str(m.id),
                _role(m),
                _text(m),
                stopped=bool(m.response_metadata.get("stopped")) if isinstance(m, AIMessage) else False,
                created=checkpoint_time(created_stamp(m)),
                reasoning=reasoning_of(m),
                thinking_seconds=_thinking_seconds(m),
                usage=_usage(m),
            )
            for m in stored
        ]
        conversation = await self.conversation(thread_id)
        awaiting = bool(messages) and messages[-1].role == "user"
        shown = state.config.get("configurable", {}).get("checkpoint_id") if state.config else None
        other_leaves = ((await self.manager.leaves(thread_id)) - {shown}) if shown else set()
        versions = await self._versions(thread_id, stored, shown, other_leaves) if other_leaves else {}
        title = conversation.title if conversation else ""
        counted = [m.usage for m in messages if m.usage is not None]
        usage = sum(counted[1:], counted[0]) if counted else None
        return ConversationView(thread_id, title, messages, awaiting, len(other_leaves), shown or "", versions, usage)

    async def _versions(
        self, thread_id: str, shown: list[BaseMessage], at: str | None, leaves: set[str]
    ) -> dict[str, Versions]:
        """Each branch that leaves the one shown at message ``i`` (the same messages before it, another one there)
        offers a version of message ``i``: the newest such branch shows it."""
        shown_ids = [str(m.id) for m in shown]
        found: dict[int, dict[str, tuple[str, str]]] = {}  # position -> version id -> (its stamp, newest leaf)
        for leaf in sorted(leaves):  # oldest first: a later leaf holding the same version replaces the older one
            branch = (await self.graph.aget_state(self._config(thread_id, leaf))).values.get("messages", [])
            common = 0
            while common < min(len(branch), len(shown)) and str(branch[common].id) == shown_ids[common]:
                common += 1
            if common < len(branch) and common < len(shown):
                version = branch[common]
                found.setdefault(common, {})[str(version.id)] = (created_stamp(version), leaf)
        result: dict[str, Versions] = {}
        for position, others in found.items():
            mine = shown[position]
            options = {**others, shown_ids[position]: (created_stamp(mine), at or "")}
            order = sorted(options, key=lambda version: (options[version][0], version))
            result[shown_ids[position]] = Versions(
                order.index(shown_ids[position]) + 1, tuple(options[version][1] for version in order)
            )
        return result

    async def show_version(self, thread_id: str, checkpoint_id: str) -> str:
        """Make the branch ending at ``checkpoint_id`` the one the conversation opens on, here and on every device:
        a checkpoint continuing it, holding the same messages, becomes the thread's newest. Returns its id."""
        check_thread_id(thread_id)
        self._check_idle(thread_id)
        if await self.saver.aget_tuple(self._config(thread_id, checkpoint_id)) is None:
            raise LookupError(f"Checkpoint {checkpoint_id} is not in this conversation")
        stored = await self.graph.aupdate_state(self._config(thread_id, checkpoint_id), None)
        return str(stored["configurable"]["checkpoint_id"])

    # --- replies --------------------------------------------------------------------------------------------
    def is_running(self, thread_id: str) -> bool:
        return thread_id in self._runs

    def _check_idle(self, thread_id: str) -> None:
        if thread_id in self._runs:
            raise RuntimeError("A reply is already streaming in this conversation: wait for it or stop it first")

    def stop(self, thread_id: str) -> bool:
        """Stop the reply streaming in this conversation; what arrived so far is kept. False if none runs."""
        task = self._runs.get(thread_id)
        if task is None or task.done():
            return False
        if thread_id not in self._answering:
            # Cancelling now could end the run before it stored the user's message (or before it started at all,
            # leaving the caller waiting for events forever): it stops itself when the model call begins.
            self._stop_requested.add(thread_id)
        elif not task.cancelling():  # a second Stop must not interrupt the first one storing the partial reply
            task.cancel()
        return True

    async def send(
        self, thread_id: str, text: str, at: str | None = None, *, model: str | None = None
    ) -> AsyncIterator[ChatEvent]:
        """Store the user's message and stream the reply, continuing checkpoint ``at`` (the one the window shows;
        the newest when None): a turn that arrived from another device meanwhile does not change what it answers.

        ``model``: the model that answers, stored with the conversation (a choice made before it existed). The title
        of a new conversation and that model are stored once the message is, never before it."""
        check_thread_id(thread_id)
        self._check_idle(thread_id)
        text = without_lone_surrogates(text)
        row = await self._row(thread_id)
        fields: dict[str, Any] = {}
        if row is None or not row.title:
            fields["title"] = (row is not None and await self._title_from_messages(thread_id)) or make_title(text)
        if model is not None:
            fields["model"] = model
        if fields:
            self._after_message.setdefault(thread_id, {}).update(fields)
        message = with_id(HumanMessage(text))
        async for event in self._run(thread_id, {"messages": [message]}, self._config(thread_id, at)):
            yield event

    async def retry(self, thread_id: str, at: str | None = None) -> AsyncIterator[ChatEvent]:
        """Ask again for the reply that failed (the user's message is already stored), at ``at`` as ``send``."""
        self._check_idle(thread_id)
        async for event in self._run(thread_id, None, self._config(thread_id, at)):
            yield event

    async def regenerate(self, thread_id: str, at: str | None = None) -> AsyncIterator[ChatEvent]:
        """A new reply to the last user message, on a new branch (the old reply stays in history); ``at``: the
        checkpoint shown (the newest when None)."""
        self._check_idle(thread_id)
        view = await self.load(thread_id, at)
        last_user = next((m for m in reversed(view.messages) if m.role == "user"), None)
        if last_user is None:
            raise LookupError("This conversation has no message to answer")
        found = await self._question_checkpoints(thread_id, last_user.id, view.checkpoint_id or None)
        if found is not None and found[1] is not None:
            # The same question asked again from where it was asked: the new reply is another version of the reply
            # (the question keeps its id), which the window lets the user walk between.
            async for event in self._run(thread_id, None, found[1]):
                yield event
            return
        async for event in self.edit_and_resend(thread_id, last_user.id, last_user.text, view.checkpoint_id or None):
            yield event

    async def edit_and_resend(
        self, thread_id: str, message_id: str, text: str, at: str | None = None
    ) -> AsyncIterator[ChatEvent]:
        """Replace a user message and everything after it with a new branch starting from the edited text; the
        message is looked for in the branch that ends at ``at`` (the one shown; the newest when None)."""
        self._check_idle(thread_id)
        fork = await self._input_checkpoint_of(thread_id, message_id, at)
        if fork is None:
            raise LookupError(f"Message {message_id} is not in this conversation")
        config = self._config(thread_id)
        config["configurable"]["checkpoint_id"] = fork["configurable"]["checkpoint_id"]
        config["configurable"]["checkpoint_ns"] = fork["configurable"].get("checkpoint_ns", "")
        message = with_id(HumanMessage(without_lone_surrogates(text)))
        async for event in self._run(thread_id, {"messages": [message]}, config):
            yield event

    async def follow(self, thread_id: str, shown: str | None) -> str | None:
        """What to show after the thread changed elsewhere, the view showing checkpoint ``shown``: the thread's newest
        when it continues ``shown`` (None says so), else ``shown`` itself: a branch taken apart on another device does
        not replace the one the user is reading (the view says it exists)."""
        if not shown or await self.saver.aget_tuple(self._config(thread_id, shown)) is None:
            return None
        found = await self.saver.aget_tuple(self._config(thread_id))
        # Ids order causally (storage/clock.py): walking back from the newest, ``shown`` comes before any id below it.
        while found is not None and found.checkpoint["id"] > shown and found.parent_config is not None:
            if found.parent_config["configurable"]["checkpoint_id"] == shown:
                return None
            found = await self.saver.aget_tuple(found.parent_config)
        return None if found is not None and found.checkpoint["id"] == shown else shown

    async def _input_checkpoint_of(
        self, thread_id: str, message_id: str, at: str | None = None
    ) -> RunnableConfig | None:
        """Walk the branch shown back to the checkpoint where this user message was the input."""
        found = await self._question_checkpoints(thread_id, message_id, at)
        return found[0] if found is not None else None

    async def _question_checkpoints(
        self, thread_id: str, message_id: str, at: str | None = None
    ) -> tuple[RunnableConfig, RunnableConfig | None] | None:
        """On the branch shown: the checkpoint where this user message was the input, and the next one on the
        branch (which holds the message, the model's call still to make; None if the branch ends at the input)."""
        found = await self.saver.aget_tuple(self._config(thread_id, at))
        after: RunnableConfig | None = None
        while found is not None:
            if found.metadata.get("source") == "input":
                for _task, channel, value in found.pending_writes or []:
                    values = value if isinstance(value, list) else [value]
                    if channel == "messages" and any(getattr(m, "id", None) == message_id for m in values):
                        return found.config, after
            if found.parent_config is None:
                return None
            after = found.config
            found = await self.saver.aget_tuple(found.parent_config)
        return None

    async def _run(
        self, thread_id: str, graph_input: dict[str, Any] | None, config: RunnableConfig
    ) -> AsyncIterator[ChatEvent]:
        self._check_idle(thread_id)
        self._answering.discard(thread_id)
        self._stop_requested.discard(thread_id)
        queue: asyncio.Queue[ChatEvent | None] = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(self._drive(thread_id, graph_input, config, queue))
        self._runs[thread_id] = task
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            if not task.done() and not task.cancelling():
                task.cancel()
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():  # we were cancelled ourselves, not just the run
                    raise
            finally:
                self._runs.pop(thread_id, None)
                self._answering.discard(thread_id)
                self._stop_requested.discard(thread_id)

    async def _drive(
        self,
        thread_id: str,
        graph_input: dict[str, Any] | None,
        config: RunnableConfig,
        queue: asyncio.Queue[ChatEvent | None],
    ) -> None:
        parts: list[str] = []
        thoughts: list[str] = []
        inline = InlineThinking()
        # The run's own newest checkpoint: what the window shows after the run comes from there, never from "the
        # thread's latest", which a turn from another device may be by then.
        last: dict[str, Any] | None = None
        naming: asyncio.Task[None] | None = None
        stored, finished = asyncio.Event(), asyncio.Event()
        waiting = self._after_message.get(thread_id)
        unsubscribe: Callable[[], None] | None = None
        if waiting is not None:
            # Before the run starts: its first checkpoint must not be missed.

            def on_change(change: Changes) -> None:
                if thread_id in change.turns:
                    stored.set()

            unsubscribe = self.manager.subscribe_changes(on_change)
        try:
            if waiting is not None:
                sent = graph_input["messages"][-1].id if graph_input else None
                naming = asyncio.get_running_loop().create_task(
                    self._store_after_message(thread_id, sent, stored, finished)
                )
            conversation = await self._row(thread_id)
            model = conversation.model if conversation else ""
            if waiting is not None and "model" in waiting:
                model = waiting["model"]
            no_model: Exception | None = None
            if not model and not self.endpoint.model:
                try:
                    await self.pick_first_model()
                except (ModelListError, LookupError) as exc:
                    # Raised at the model call, not here: the question is stored first, and Retry asks again.
                    no_model = exc
            endpoint = self.endpoint
            context = ChatContext(
                lambda: self._model_for(model, no_model),
                endpoint.system_prompt,
                first_token_timeout=endpoint.first_token_timeout,
                token_timeout=endpoint.token_timeout,
            )
            modes = ["tasks", "messages", "checkpoints"]
            stream = self.graph.astream(graph_input, config, context=context, stream_mode=modes)
            async for mode, data in stream:
                if mode == "checkpoints":
                    last = data
                    continue
                if mode == "tasks":
                    if data.get("name") == MODEL_NODE and "input" in data:
                        # The model call begins; the graph has the user's message and keeps it if stopped now.
                        self._answering.add(thread_id)
                        if thread_id in self._stop_requested:
                            task = asyncio.current_task()
                            assert task is not None
                            task.cancel()
                    continue
                chunk, meta = data
                if meta.get("langgraph_node") != MODEL_NODE or not isinstance(chunk, BaseMessage):
                    continue
                thought = reasoning_of(chunk)
                if thought:
                    thoughts.append(thought)
                    queue.put_nowait(Thinking(thought))
                for part, piece in inline.feed(_text(chunk)):
                    (parts if part == "answer" else thoughts).append(piece)
                    queue.put_nowait(Token(piece) if part == "answer" else Thinking(piece))
            for part, piece in inline.end():
                (parts if part == "answer" else thoughts).append(piece)
                queue.put_nowait(Token(piece) if part == "answer" else Thinking(piece))
            messages = last["values"].get("messages", []) if last else []
            if last is None or last["next"] or not messages or not isinstance(messages[-1], AIMessage):
                queue.put_nowait(ReplyFailed("The model gave no reply", "unknown", "".join(parts)))
            else:
                done_at = str(last["config"]["configurable"]["checkpoint_id"])
                queue.put_nowait(ReplyDone(str(messages[-1].id), _text(messages[-1]), checkpoint_id=done_at))
        except asyncio.CancelledError as cancelled:
            # LangGraph stores a run's last writes in background tasks; cancelled, it hands over the task that
            # finishes them (langgraph/pregel/_loop.py, AsyncPregelLoop.__aexit__). Wait for it: a write still on
            # its way when storage closes (Quit right after Stop) would fail there and the user's message be lost.
            for pending in cancelled.args:
                if isinstance(pending, asyncio.Future):
                    with contextlib.suppress(BaseException):
                        await asyncio.shield(pending)
            await self.manager.writes_settled(STOP_SETTLE_SECONDS)
            newest = last["config"] if last is not None else None
            queue.put_nowait(await self._keep_partial(thread_id, "".join(parts), newest, "".join(thoughts)))
        except Exception as exc:
            message, kind = describe_model_error(exc, self.endpoint.base_url)
            if kind == "bug":
                log.exception("reply failed")
            queue.put_nowait(ReplyFailed(message, kind, "".join(parts), rate_limit_wait(exc)))
        finally:
            try:
                if naming is not None:
                    finished.set()
                    stored.set()
                    await asyncio.shield(naming)  # a Stop of the run must not stop the title being stored
            finally:
                if unsubscribe is not None:
                    unsubscribe()
                queue.put_nowait(None)

    async def _store_after_message(
        self, thread_id: str, message_id: str | None, stored: asyncio.Event, finished: asyncio.Event
    ) -> None:
        """Write the index fields waiting for this thread's message (``_after_message``) once a stored checkpoint
        holds it (``message_id``; any message for a run that sends none): woken by each checkpoint storage reports
        stored for the thread, and once more when the run has ended (then, if it is still not there, the fields
        keep waiting for the next run)."""
        while True:
            ended = finished.is_set()  # read before looking: a checkpoint stored after the look wakes us again
            state = await self.graph.aget_state(self._config(thread_id))
            messages = state.values.get("messages", [])
            if (message_id is None and messages) or any(m.id == message_id for m in messages):
                break
            if ended:
                return
            await stored.wait()
            stored.clear()
        async with self._index_lock:
            fields = self._after_message.pop(thread_id, None)
            if fields:
                await self.manager.update_conversation(thread_id, **fields)

    async def _keep_partial(
        self, thread_id: str, partial: str, at: RunnableConfig | None = None, reasoning: str = ""
    ) -> ChatEvent:
        """After Stop: store what arrived as the reply (unless the full reply made it in first), continuing the
        run's own newest checkpoint ``at`` (the thread's latest when the run stored none)."""
        thread = at or self._config(thread_id)
        state = await self.graph.aget_state(thread)
        messages = state.values.get("messages", [])
        shown = str((state.config or {}).get("configurable", {}).get("checkpoint_id") or "")
        if not state.next and messages and isinstance(messages[-1], AIMessage):
            return ReplyDone(str(messages[-1].id), _text(messages[-1]), checkpoint_id=shown)
        if not partial and not reasoning:
            return ReplyFailed("Stopped before the model answered", "stopped")
        reasoned = {REASONING: reasoning} if reasoning else {}
        reply = with_id(
            AIMessage(partial, id=str(uuid.uuid4()), response_metadata={"stopped": True}, additional_kwargs=reasoned)
        )
        stored = await self.graph.aupdate_state(thread, {"messages": [reply]}, as_node=MODEL_NODE)
        stored_at = str(stored["configurable"].get("checkpoint_id") or "")
        return ReplyDone(str(reply.id), partial, stopped=True, checkpoint_id=stored_at)

    @staticmethod
    def _config(thread_id: str, at: str | None = None) -> RunnableConfig:
        if at:
            return {"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": at}}
        return {"configurable": {"thread_id": thread_id}}

    # --- conversation metadata ------------------------------------------------------------------------------
    async def rename(self, thread_id: str, title: str) -> None:
        await self._update(thread_id, title=clean_title(title))

    async def set_pinned(self, thread_id: str, pinned: bool) -> None:
        await self._update(thread_id, pinned=pinned)

    async def set_model(self, thread_id: str, model: str) -> None:
        """Use ``model`` for the replies in this conversation; one not stored yet gets it with its first message."""
        await self._update(thread_id, model=model)

    async def _update(self, thread_id: str, **fields: Any) -> None:
        """Change the index row; for a conversation not stored yet, wait for its first message (``send``)."""
        check_thread_id(thread_id)
        async with self._index_lock:
            waiting = self._after_message.get(thread_id)
            if await self._row(thread_id) is None:
                self._after_message.setdefault(thread_id, {}).update(fields)
                return
            if waiting is not None:
                for name in fields:  # newer than what the first message would store
                    waiting.pop(name, None)
            await self.manager.update_conversation(thread_id, **fields)
        if "title" in fields:
            self._derived_titles.pop(thread_id, None)

    async def delete(self, thread_id: str) -> None:
        check_thread_id(thread_id)
        task = self._runs.get(thread_id)
        if task is not None:
            # A stopped reply stores what arrived: let it finish first, or it would write into the deleted thread.
            self.stop(thread_id)
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():  # we were cancelled ourselves, not just the run
                    raise
        self._after_message.pop(thread_id, None)
        self._derived_titles.pop(thread_id, None)
        await self.saver.adelete_thread(thread_id)

    # --- export ---------------------------------------------------------------------------------------------
    async def export_markdown(self, thread_id: str) -> str:
        view = await self.load(thread_id)
        lines = [f"# {view.title or 'Conversation'}", ""]
        for message in view.messages:
            who = {"user": "You", "assistant": "Assistant", "system": "System"}[message.role]
            suffix = " (stopped)" if message.stopped else ""
            lines += [f"**{who}**{suffix}:", ""]
            if message.reasoning:
                lines += ["<details><summary>Thinking</summary>", "", message.reasoning, "", "</details>", ""]
            lines += [message.text, ""]
        return "\n".join(lines)

    async def export_json(self, thread_id: str) -> str:
        view = await self.load(thread_id)
        conversation = await self.conversation(thread_id)
        data = {
            "thread_id": thread_id,
            "title": view.title,
            "created": datetime.fromtimestamp(conversation.created, UTC).isoformat() if conversation else None,
            "model": conversation.model if conversation else "",
            "messages": [
                {
                    "id": m.id,
                    "role": m.role,
                    "content": m.text,
                    **({"stopped": True} if m.stopped else {}),
                    **({"reasoning": m.reasoning} if m.reasoning else {}),
                    **({"created": datetime.fromtimestamp(m.created, UTC).isoformat()} if m.created else {}),
                    **(
                        {"usage": {"input_tokens": m.usage.input_tokens, "output_tokens": m.usage.output_tokens}}
                        if m.usage
                        else {}
                    ),
                }
                for m in view.messages
            ],
        }
        return json.dumps(data, ensure_ascii=False, indent=2)
