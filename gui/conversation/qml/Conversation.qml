// The conversation: a ListView of message cards. Python gives `messages` (gui.conversation.model.MessageListModel)
// and `chat` (gui.conversation.view.Bridge: the actions, the fonts and colours that come from Python).
import QtQuick
import QtQuick.Controls.Basic

Rectangle {
    id: root
    color: pal.base

    SystemPalette { id: pal; colorGroup: SystemPalette.Active }

    readonly property bool dark: pal.base.hslLightness < 0.5
    readonly property color muted: pal.placeholderText
    readonly property color userCard: Qt.tint(pal.base, Qt.rgba(pal.highlight.r, pal.highlight.g, pal.highlight.b, 0.12))
    readonly property color replyCard: Qt.tint(pal.base, Qt.rgba(pal.text.r, pal.text.g, pal.text.b, 0.04))
    readonly property int maxCardWidth: 760
    readonly property color hoverFill: Qt.rgba(pal.text.r, pal.text.g, pal.text.b, 0.08)
    readonly property color pressFill: Qt.rgba(pal.text.r, pal.text.g, pal.text.b, 0.16)

    // A flat button with an icon (icons/*.svg, drawn in the text's colour): filled only while hovered or pressed,
    // outlined while it has the keyboard focus. Its text is its name for screen readers and tests; it shows only
    // when `display` asks for it (the "Copied ✓" feedback).
    component IconButton: ToolButton {
        id: iconButton
        property string tip: ""
        display: AbstractButton.IconOnly
        icon.width: 16
        icon.height: 16
        icon.color: enabled ? pal.text : root.muted
        // The controls' own palette does not follow a palette set on the application after start (Settings →
        // Appearance); the scene's SystemPalette does.
        palette.buttonText: pal.text
        palette.highlight: pal.highlight
        padding: 6
        font.pointSize: chat.fontSize * 0.9
        Accessible.name: text
        ToolTip.visible: hovered && tip.length > 0
        ToolTip.text: tip
        ToolTip.delay: 500
        background: Rectangle {
            implicitWidth: 28
            implicitHeight: 28
            radius: 6
            color: iconButton.down ? root.pressFill : iconButton.hovered ? root.hoverFill : "transparent"
            border.width: iconButton.visualFocus ? 2 : 0
            border.color: pal.highlight
        }
    }

    ListView {
        id: list
        objectName: "messageList"
        anchors.fill: parent
        model: messages
        spacing: 10
        // Spacers, not top/bottomMargin: positionViewAtEnd() stops short of a bottom margin (atYEnd stays false).
        header: Item { width: 1; height: 12 }
        // The footer is also where a failed reply says so, with its Retry (under the last message).
        footer: Item {
            width: list.width
            height: 12 + (chat.hasError ? errorCard.height + 10 : 0)
            Rectangle {
                id: errorCard
                objectName: "errorBlock"
                visible: chat.hasError
                y: 10
                width: Math.min(root.maxCardWidth, list.width - 32)
                x: (list.width - width) / 2
                height: errorColumn.implicitHeight + 24
                radius: 10
                color: Qt.tint(pal.base, Qt.rgba(0.8, 0.2, 0.2, 0.10))
                border.color: Qt.rgba(0.8, 0.2, 0.2, 0.5)
                Accessible.role: Accessible.AlertMessage
                Accessible.name: chat.errorTitle + " " + chat.errorMessage
                Column {
                    id: errorColumn
                    x: 14; y: 12
                    width: parent.width - 28
                    spacing: 6
                    Text {
                        font.pointSize: chat.fontSize
                        objectName: "errorText"
                        width: parent.width
                        text: chat.errorHtml
                        textFormat: Text.StyledText
                        wrapMode: Text.Wrap
                        color: pal.text
                    }
                    Text {
                        font.pointSize: chat.fontSize
                        visible: chat.errorPartial.length > 0
                        text: "What arrived before the failure (not saved):"
                        color: root.muted
                    }
                    Text {
                        font.pointSize: chat.fontSize
                        objectName: "errorPartial"
                        visible: chat.errorPartial.length > 0
                        width: parent.width
                        text: chat.errorPartial
                        textFormat: Text.PlainText
                        wrapMode: Text.Wrap
                        color: root.muted
                    }
                    Button {
                        font.pointSize: chat.fontSize
                        objectName: "retryButton"
                        visible: chat.errorRetry
                        text: chat.errorRetryLabel
                        icon.source: "icons/regenerate.svg"
                        icon.color: pal.buttonText
                        palette.button: pal.button
                        palette.buttonText: pal.buttonText
                        icon.width: 16
                        icon.height: 16
                        onClicked: chat.retry()
                        Accessible.name: "Retry the reply"
                    }
                }
            }
        }
        boundsBehavior: Flickable.StopAtBounds
        // The keys are handled below: the list's own navigation moves currentIndex, and a current item is kept
        // made wherever it is (-1: none).
        keyNavigationEnabled: false
        currentIndex: -1
        activeFocusOnTab: true
        Accessible.role: Accessible.List
        Accessible.name: "Conversation"
        // Follow the end while the user has not scrolled away from it (a streaming reply grows the last card).
        property bool follow: true
        onMovementEnded: follow = atYEnd
        onContentHeightChanged: if (follow) Qt.callLater(list.toEnd)
        onCountChanged: if (follow) Qt.callLater(list.toEnd)
        function toEnd() { if (list.follow) list.positionViewAtEnd() }
        function jumpToEnd() { list.follow = true; list.positionViewAtEnd() }
        // Scroll like a page: the arrows by a line or two, Page Up/Down by a screen; following the end again once
        // it is reached.
        function scrollBy(dy) {
            var top = list.originY
            var bottom = list.originY + list.contentHeight - list.height
            list.contentY = Math.max(top, Math.min(bottom, list.contentY + dy))
            list.follow = list.contentY >= bottom - 1
        }
        // The keyboard's way through the conversation: the card of message i takes the focus (and shows its
        // toolbar), scrolled into view.
        function focusMessage(i) {
            if (i < 0 || i >= list.count)
                return
            list.positionViewAtIndex(i, ListView.Contain)
            list.follow = i === list.count - 1 && list.atYEnd
            var item = list.itemAtIndex(i)
            if (item)
                item.focusCard()
        }
        // Keys shared by the list and its cards.
        function pageKeys(event) {
            if (event.key === Qt.Key_PageUp) list.scrollBy(-list.height * 0.9)
            else if (event.key === Qt.Key_PageDown) list.scrollBy(list.height * 0.9)
            else if (event.key === Qt.Key_End && event.modifiers === Qt.NoModifier) list.jumpToEnd()
            else if (event.key === Qt.Key_Home && event.modifiers === Qt.NoModifier) list.positionViewAtBeginning()
            else return false
            return true
        }
        // The list itself has the focus (Tab's first stop): the arrows scroll; Tab goes on to the cards.
        Keys.onPressed: (event) => {
            if (event.key === Qt.Key_Up) list.scrollBy(-48)
            else if (event.key === Qt.Key_Down) list.scrollBy(48)
            else if (!list.pageKeys(event)) return
            if (event.key === Qt.Key_Home) list.follow = false
            event.accepted = true
        }

        ScrollBar.vertical: ScrollBar { policy: ScrollBar.AsNeeded }

        delegate: Item {
            id: row
            objectName: "message"
            required property int index
            required property string id
            required property string role
            required property string timestamp
            required property bool streaming
            required property bool stopped
            required property int branchIndex
            required property int branchCount
            required property string reasoning
            required property real reasoningSeconds
            required property var usage
            required property var blocks
            required property int stableBlocks

            width: ListView.view.width
            height: card.height
            function focusCard() { card.forceActiveFocus(Qt.TabFocusReason) }
            // Only the last reply offers Regenerate, and only when nothing streams or failed after it.
            readonly property bool hasUsage: role === "assistant" && !streaming && !!usage && usage.tokens > 0
            readonly property bool canRegenerate: role === "assistant" && !streaming && index === list.count - 1 && chat.canRegenerate

            // A focus scope: it keeps the focus (and its toolbar) while one of its buttons has it.
            FocusScope {
                id: card
                objectName: "card"
                width: Math.min(root.maxCardWidth, row.width - 32)
                x: (row.width - width) / 2
                height: body.implicitHeight + 24
                activeFocusOnTab: true
                Rectangle {
                    anchors.fill: parent
                    radius: 10
                    color: row.role === "user" ? root.userCard : root.replyCard
                    border.color: card.activeFocus ? pal.highlight : Qt.rgba(pal.mid.r, pal.mid.g, pal.mid.b, 0.35)
                    border.width: card.activeFocus ? 2 : 1
                }
                Accessible.role: Accessible.ListItem
                Accessible.name: (row.role === "user" ? "You" : "Assistant") + ", " + row.timestamp

                HoverHandler { id: hover }
                Keys.onPressed: (event) => {
                    if (event.matches(StandardKey.Copy)) card.copy()
                    else if (event.key === Qt.Key_E && row.role === "user") chat.edit(row.id)
                    else if (event.key === Qt.Key_R && row.canRegenerate) chat.regenerate(row.id)
                    // Up and Down move between the cards, Home to the first (End, to the newest, is a page key).
                    else if (event.key === Qt.Key_Up) list.focusMessage(row.index - 1)
                    else if (event.key === Qt.Key_Down) list.focusMessage(row.index + 1)
                    else if (event.key === Qt.Key_Home && event.modifiers === Qt.NoModifier) list.focusMessage(0)
                    else if (event.key === Qt.Key_End && event.modifiers === Qt.NoModifier) { list.jumpToEnd(); list.focusMessage(list.count - 1) }
                    else if (!list.pageKeys(event)) return
                    event.accepted = true
                }

                Column {
                    id: body
                    x: 14; y: 12
                    width: card.width - 28
                    spacing: 6

                    Row {
                        spacing: 8
                        height: 24
                        Text {
                            font.pointSize: chat.fontSize
                            anchors.verticalCenter: parent.verticalCenter
                            text: row.role === "user" ? "You" : "Assistant"
                            font.bold: true
                            color: pal.text
                        }
                        Text {
                            objectName: "timestamp"
                            anchors.verticalCenter: parent.verticalCenter
                            text: row.timestamp + (row.streaming ? " · writing" : row.stopped ? " · stopped" : "")
                            color: root.muted
                            font.pointSize: chat.fontSize * 0.85
                        }
                        IconButton {
                            objectName: "stopButton"
                            visible: row.streaming
                            anchors.verticalCenter: parent.verticalCenter
                            text: "Stop"
                            display: AbstractButton.TextBesideIcon
                            icon.source: "icons/stop.svg"
                            icon.width: 12
                            icon.height: 12
                            onClicked: chat.stop()
                            Accessible.name: "Stop the reply"
                            tip: "Stop the reply; what arrived is kept (Esc)"
                        }
                    }

                    // Until the first word: how long Cairn has waited (a local server may be loading the model).
                    Text {
                        font.pointSize: chat.fontSize
                        objectName: "waiting"
                        visible: row.streaming && chat.waiting.length > 0
                        text: visible ? chat.waiting : ""
                        color: root.muted
                    }

                    // Reasoning, collapsed: "Thought for N s".
                    Column {
                        visible: row.reasoning.length > 0
                        width: parent.width
                        spacing: 4
                        property bool open: false
                        Text {
                            font.pointSize: chat.fontSize
                            id: thought
                            objectName: "thought"
                            text: (parent.open ? "▾ " : "▸ ") + (row.reasoningSeconds < 0.5 ? "Thought for a moment" : "Thought for " + Math.round(row.reasoningSeconds) + " s")
                            color: root.muted
                            TapHandler { onTapped: thought.parent.open = !thought.parent.open }
                        }
                        Text {
                            font.pointSize: chat.fontSize
                            objectName: "reasoningText"
                            visible: parent.open
                            width: parent.width
                            text: row.reasoning
                            wrapMode: Text.Wrap
                            color: root.muted
                            textFormat: Text.PlainText
                        }
                    }

                    // The message's blocks (paragraphs, lists, tables, code), a paragraph's space apart.
                    Column {
                        width: parent.width
                        spacing: 10
                        Repeater {
                            model: row.blocks
                            delegate: Loader {
                                id: block
                                required property int index
                                required property string kind
                                required property string html
                                required property string language
                                required property var chunks
                                required property bool styled
                                width: body.width
                                // Selectable once final: a streaming reply's blocks before its last cut never change
                                // again, and only its growing tail stays a Text (StyledText lays out far faster than a
                                // TextEdit's rich text: docs/CHAT_VIEW_PROTOTYPE.md). Finishing a long reply then
                                // makes one or two TextEdits, not all of them at once.
                                readonly property bool growing: row.streaming && index >= row.stableBlocks
                                sourceComponent: kind === "code" ? codeBlock : chat.selectableText && !growing ? selectableBlock : textBlock
                            }
                        }
                    }

                    // Tokens and speed under a finished reply; the branch switcher when there are other versions.
                    Row {
                        spacing: 12
                        // Not `usageText.visible`: an item's visible is false while its parent's is (a loop).
                        visible: row.branchCount > 1 || row.hasUsage
                        Row {
                            id: switcher
                            visible: row.branchCount > 1
                            spacing: 2
                            IconButton {
                                objectName: "previousVersion"
                                text: "Previous version"
                                icon.source: "icons/previous.svg"
                                enabled: row.branchIndex > 0
                                onClicked: chat.switchBranch(row.id, -1)
                                tip: "Previous version"
                            }
                            Text {
                                font.pointSize: chat.fontSize
                                objectName: "versionLabel"
                                anchors.verticalCenter: parent.verticalCenter
                                text: (row.branchIndex + 1) + " / " + row.branchCount
                                color: root.muted
                            }
                            IconButton {
                                objectName: "nextVersion"
                                text: "Next version"
                                icon.source: "icons/next.svg"
                                enabled: row.branchIndex < row.branchCount - 1
                                onClicked: chat.switchBranch(row.id, 1)
                                tip: "Next version"
                            }
                        }
                        Text {
                            id: usageText
                            objectName: "usage"
                            anchors.verticalCenter: parent.verticalCenter
                            visible: row.hasUsage
                            text: visible ? Math.round(row.usage.tokens) + " tokens" + (row.usage.perSecond > 0 ? " · " + row.usage.perSecond.toFixed(1) + " tok/s" : "") : ""
                            color: root.muted
                            font.pointSize: chat.fontSize * 0.85
                        }
                    }
                }

                // The toolbar: on hover or when the card (or one of its buttons) has the focus. Made only then: a card
                // that is merely on screen costs no buttons.
                property bool copied: false
                function copy() { chat.copyMessage(row.id); card.copied = true }
                Loader {
                    id: toolbar
                    objectName: "toolbar"
                    anchors.right: parent.right
                    anchors.top: parent.top
                    anchors.margins: 6
                    active: hover.hovered || card.activeFocus || card.copied
                    sourceComponent: FocusScope {
                        width: buttons.width
                        height: buttons.height
                        Timer { running: card.copied; interval: 1500; onTriggered: card.copied = false }
                        Row {
                            id: buttons
                            spacing: 2
                            IconButton {
                                objectName: "copyButton"
                                // The feedback is in place: the button says so for a moment.
                                text: card.copied ? "Copied ✓" : "Copy"
                                display: card.copied ? AbstractButton.TextOnly : AbstractButton.IconOnly
                                icon.source: "icons/copy.svg"
                                onClicked: card.copy()
                                Accessible.name: card.copied ? "Copied" : "Copy message"
                                tip: "Copy this message (Ctrl+C)"
                            }
                            IconButton {
                                objectName: "editButton"
                                visible: row.role === "user"
                                text: "Edit"
                                icon.source: "icons/edit.svg"
                                onClicked: chat.edit(row.id)
                                Accessible.name: "Edit message"
                                tip: "Edit and send again (E)"
                            }
                            IconButton {
                                objectName: "regenerateButton"
                                visible: row.canRegenerate
                                text: "Regenerate"
                                icon.source: "icons/regenerate.svg"
                                onClicked: chat.regenerate(row.id)
                                Accessible.name: "Regenerate reply"
                                tip: "Write this reply again (R)"
                            }
                        }
                    }
                }

                Component {
                    id: textBlock
                    Text {
                        font.pointSize: chat.fontSize
                        // Markdown already rendered by gui.markdown into Qt's rich-text HTML.
                        text: parent ? parent.html : ""
                        textFormat: parent && parent.styled ? Text.StyledText : Text.RichText
                        wrapMode: Text.Wrap
                        color: pal.text
                        linkColor: chat.linkColor
                        onLinkActivated: (link) => chat.openLink(link)
                        HoverHandler { cursorShape: parent.hoveredLink ? Qt.PointingHandCursor : Qt.ArrowCursor }
                    }
                }

                Component {
                    id: selectableBlock
                    // The same text, selectable with the mouse (within one block: no Qt Quick item selects across
                    // items). TextEdit has no StyledText: every block is RichText.
                    TextEdit {
                        font.pointSize: chat.fontSize
                        objectName: "selectableText"
                        text: parent ? parent.html : ""
                        textFormat: TextEdit.RichText
                        wrapMode: TextEdit.Wrap
                        readOnly: true
                        selectByMouse: true
                        persistentSelection: false
                        activeFocusOnTab: false
                        color: pal.text
                        selectionColor: pal.highlight
                        selectedTextColor: pal.highlightedText
                        // A click on a link leaves the link's words selected (Qt's text control marks it for the
                        // keyboard): followed, it needs no highlight.
                        onLinkActivated: (link) => { deselect(); chat.openLink(link) }
                        HoverHandler { cursorShape: parent.hoveredLink ? Qt.PointingHandCursor : Qt.IBeamCursor }
                        // Ctrl+C copies the selection; with nothing selected, the whole message (as on the card).
                        Keys.onPressed: (event) => {
                            if (event.matches(StandardKey.Copy) && selectedText.length === 0) {
                                card.copy()
                                event.accepted = true
                            }
                        }
                    }
                }

                Component {
                    id: codeBlock
                    Rectangle {
                        id: codeFrame
                        readonly property var blockItem: parent
                        height: codeColumn.height + 8
                        radius: 6
                        color: chat.codeBackground
                        border.color: Qt.rgba(pal.mid.r, pal.mid.g, pal.mid.b, 0.5)
                        Column {
                            id: codeColumn
                            x: 8; y: 4
                            width: parent.width - 16
                            Item {
                                width: parent.width
                                height: 26
                                Text {
                                    anchors.verticalCenter: parent.verticalCenter
                                    text: codeFrame.blockItem.language || "code"
                                    color: root.muted
                                    font.pointSize: chat.fontSize * 0.85
                                }
                                IconButton {
                                    id: copyCode
                                    objectName: "copyCodeButton"
                                    anchors.right: parent.right
                                    anchors.verticalCenter: parent.verticalCenter
                                    property bool copied: false
                                    text: copied ? "Copied ✓" : "Copy"
                                    display: copied ? AbstractButton.TextOnly : AbstractButton.TextBesideIcon
                                    icon.source: "icons/copy.svg"
                                    icon.width: 14
                                    icon.height: 14
                                    padding: 4
                                    onClicked: { chat.copyCode(row.id, codeFrame.blockItem.index); copied = true; codeTimer.restart() }
                                    Timer { id: codeTimer; interval: 1500; onTriggered: copyCode.copied = false }
                                    Accessible.name: copied ? "Copied" : "Copy code"
                                    tip: "Copy this code"
                                }
                            }
                            Flickable {
                                // Its own horizontal scroll: long lines do not widen the card.
                                width: parent.width
                                height: lines.height
                                contentWidth: lines.width
                                contentHeight: lines.height
                                flickableDirection: Flickable.HorizontalFlick
                                boundsBehavior: Flickable.StopAtBounds
                                clip: true
                                ScrollBar.horizontal: ScrollBar { policy: ScrollBar.AsNeeded }
                                Column {
                                    id: lines
                                    // Where the code's top is in the list's content: only chunks on screen are drawn. The
                                    // software renderer (offscreen, and the fallback without a GPU) visits every node of
                                    // the scene each frame, and a 200 KB block is thousands of glyph runs.
                                    readonly property real topInList: { list.contentY; row.y; body.height; return lines.mapToItem(list.contentItem, 0, 0).y }
                                    Repeater {
                                        model: codeFrame.blockItem.chunks
                                        delegate: Item {
                                            // The item keeps the chunk's place in the column; the text inside is hidden
                                            // (out of the scene) when off screen.
                                            width: chunk.implicitWidth
                                            height: chunk.implicitHeight
                                            Text {
                                                font.pointSize: chat.fontSize
                                                id: chunk
                                                visible: lines.topInList + parent.y + parent.height > list.contentY - 100 && lines.topInList + parent.y < list.contentY + list.height + 100
                                                text: model.text
                                                textFormat: model.rich ? Text.StyledText : Text.PlainText
                                                font.family: chat.fixedFont
                                                color: pal.text
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    // The empty or loading state ("Loading…", or how to start).
    Text {
        font.pointSize: chat.fontSize
        objectName: "note"
        visible: chat.note.length > 0
        anchors.centerIn: parent
        width: Math.min(root.maxCardWidth, parent.width - 48)
        horizontalAlignment: Text.AlignHCenter
        wrapMode: Text.Wrap
        text: chat.note
        color: root.muted
    }

    // "Jump to the newest" when the user has scrolled up.
    RoundButton {
        font.pointSize: chat.fontSize
        id: jump
        objectName: "jumpButton"
        anchors.horizontalCenter: parent.horizontalCenter
        anchors.bottom: parent.bottom
        anchors.bottomMargin: 16
        visible: !list.follow && list.count > 0
        text: "Newest"
        icon.source: "icons/down.svg"
        icon.color: pal.buttonText
        palette.button: pal.button
        palette.buttonText: pal.buttonText
        icon.width: 16
        icon.height: 16
        onClicked: list.jumpToEnd()
        Accessible.name: "Jump to the newest message"
        ToolTip.visible: hovered; ToolTip.text: "Jump to the newest message (End)"
        ToolTip.delay: 500
    }
}
