"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 §3), and the thread-list syntax of
the THREAD response (§4). Pure: no I/O; input is what imap/sort.py extracted per message.

Invariants of the REFERENCES tree built here: parent/child links never form a loop (§3 step
1.A: "Do not create a parent/child link if creating that link would introduce a loop"), and a
node's `parent` and its place in the parent's `children` always agree (steps 1.A/1.B).
Dummy nodes (message None) stand for messages referenced but not searched.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mailstack.imap.sort import Message

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


@dataclass(eq=False)
class Node:
    """A thread tree node: a message, or a dummy (`message` None)."""

    message: Message | None = None
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    def _order(self) -> tuple[int, int]:
        """Sent date, then sequence number (RFC 5256 §2.2); a dummy sorts as its first
        child (its children are sorted first)."""
        node = self
        while node.message is None:
            if not node.children:  # pragma: no cover - pruned before any sort
                return (0, 0)
            node = node.children[0]
        return (node.message.date, node.message.seq)

    def is_ancestor_of(self, other: Node) -> bool:
        node: Node | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False


def _link(parent: Node, child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _unlink(child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def _sort_siblings(nodes: list[Node]) -> None:
    """Step 6: every set of siblings by sent date, the deepest first."""
    for node in nodes:
        _sort_siblings(node.children)
    nodes.sort(key=Node._order)


def ordered_subject(messages: Sequence[Message]) -> list[Node]:
    """THREAD=ORDEREDSUBJECT: messages grouped by base subject, each group in sent-date
    order; the group's first message is the parent of all the others (no grandchildren);
    threads ordered by their first message's sent date."""
    ordered = sorted(messages, key=lambda m: (m.subject, m.date, m.seq))
    threads: list[Node] = []
    for _, group in itertools.groupby(ordered, key=lambda m: m.subject):
        head, *rest = group
        root = Node(head)
        for m in rest:
            _link(root, Node(m))
        threads.append(root)
    threads.sort(key=Node._order)
    return threads


def references(messages: Sequence[Message]) -> list[Node]:
    """THREAD=REFERENCES (RFC 5256 §3, steps 1-6)."""
    by_id: dict[str, Node] = {}
    nodes: list[Node] = []
    for m in sorted(messages, key=lambda m: m.seq):
        # 1.A: a message without a (valid) Message-ID, or with one an earlier message
        # already has, gets an ID of its own: a node nobody can reference.
        node = by_id.get(m.message_id) if m.message_id is not None else None
        if node is not None and node.message is None:
            node.message = m  # it was a dummy made for a reference: now the message
        else:
            node = Node(m)
            if m.message_id is not None and m.message_id not in by_id:
                by_id[m.message_id] = node
        nodes.append(node)
        chain = [by_id.setdefault(ref, Node()) for ref in m.references]
        for parent, child in itertools.pairwise(chain):
            # A message that already has a parent keeps it (References may be truncated).
            if child.parent is None and parent is not child and not child.is_ancestor_of(parent):
                _link(parent, child)
        # 1.B: the last reference is the parent, replacing any parent found so far.
        _unlink(node)
        if chain and chain[-1] is not node and not node.is_ancestor_of(chain[-1]):
            _link(chain[-1], node)
    # 2: parentless nodes are the roots' children.
    seen: set[int] = set()
    roots: list[Node] = []
    for node in itertools.chain(nodes, by_id.values()):
        if node.parent is None and id(node) not in seen:
            seen.add(id(node))
            roots.append(node)
    # 3: prune dummies.
    roots = _prune(roots, at_root=True)
    # 4: top-level siblings by sent date (a dummy by its first child's).
    for node in roots:
        if node.message is None:
            node.children.sort(key=Node._order)
    roots.sort(key=Node._order)
    roots = _merge_subjects(roots)
    _sort_siblings(roots)  # 6
    return roots


def _prune(nodes: list[Node], *, at_root: bool) -> list[Node]:
    """Step 3: drop childless dummies; splice a dummy's children into its place, except at
    the top level when there is more than one of them."""
    out: list[Node] = []
    for node in nodes:
        node.children = _prune(node.children, at_root=False)
        if node.message is None:
            if not node.children:
                continue
            if not at_root or len(node.children) == 1:
                for child in node.children:
                    child.parent = node.parent
                out.extend(node.children)
                continue
        out.append(node)
    if at_root:
        for node in out:
            node.parent = None
    return out


def _thread_subject(node: Node) -> tuple[bytes, bool]:
    """Step 5.B.i: the base subject of the node's message, or of its first child if it is a
    dummy; and whether that message is a reply or forward."""
    message = node.message if node.message is not None else node.children[0].message
    if message is None:  # pragma: no cover - a dummy's first child is never a dummy here
        return b"", False
    return message.subject, message.is_refwd and node.message is not None


def _merge_subjects(roots: list[Node]) -> list[Node]:
    """Step 5: merge top-level threads with the same base subject."""
    table: dict[bytes, Node] = {}
    for node in roots:  # 5.B: one message per subject, dummies and non-replies preferred
        subject, is_refwd = _thread_subject(node)
        if not subject:
            continue
        held = table.get(subject)
        if held is None or (
            held.message is not None
            and (node.message is None or (_thread_subject(held)[1] and not is_refwd))
        ):
            table[subject] = node
    out: list[Node] = []
    for node in roots:  # 5.C
        subject, is_refwd = _thread_subject(node)
        held = table.get(subject) if subject else None
        if held is None or held is node:
            out.append(node)
            continue
        if held.message is None and node.message is None:
            for child in list(node.children):
                _link(held, child)
        elif held.message is None or (is_refwd and not _thread_subject(held)[1]):
            _link(held, node)
        else:
            dummy = Node()
            position = out.index(held) if held in out else None
            _link(dummy, held)
            _link(dummy, node)
            table[subject] = dummy
            if position is not None:
                out[position] = dummy
            else:  # `held` comes later among the roots: it is replaced when reached
                _replace_later(roots, held, dummy)
    return [n for n in out if n.parent is None]


def _replace_later(roots: list[Node], old: Node, new: Node) -> None:
    roots[roots.index(old)] = new


def render(threads: Sequence[Node], number: Callable[[Message], int]) -> str:
    """The THREAD response's thread-lists (RFC 5256 §4):

    thread-list    = "(" (thread-members / thread-nested) ")"
    thread-members = nz-number *(SP nz-number) [SP thread-nested]
    thread-nested  = 2*thread-list
    """
    return "".join(_render(node, number) for node in threads)


def _render(node: Node, number: Callable[[Message], int]) -> str:
    parts: list[str] = []
    while True:
        if node.message is not None:
            parts.append(str(number(node.message)))
        if len(node.children) != 1:
            break
        node = node.children[0]  # an only child continues the same list
    if node.children:
        parts.append("".join(_render(child, number) for child in node.children))
    return "(" + " ".join(parts) + ")"
