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
                        objectName: "errorText"
                        width: parent.width
                        text: chat.errorHtml
                        textFormat: Text.StyledText
                        wrapMode: Text.Wrap
                        color: pal.text
                    }
                    Text {
                        visible: chat.errorPartial.length > 0
                        text: "What arrived before the failure (not saved):"
                        color: root.muted
                    }
                    Text {
                        objectName: "errorPartial"
                        visible: chat.errorPartial.length > 0
                        width: parent.width
                        text: chat.errorPartial
                        textFormat: Text.PlainText
                        wrapMode: Text.Wrap
                        color: root.muted
                    }
                    Button {
                        objectName: "retryButton"
                        visible: chat.errorRetry
                        text: "↻ Retry"
                        onClicked: chat.retry()
                        Accessible.name: "Retry the reply"
                    }
                }
            }
        }
        boundsBehavior: Flickable.StopAtBounds
        keyNavigationEnabled: true
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

            width: ListView.view.width
            height: card.height
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
                    if (event.matches(StandardKey.Copy)) { card.copy(); event.accepted = true }
                    else if (event.key === Qt.Key_E && row.role === "user") { chat.edit(row.id); event.accepted = true }
                    else if (event.key === Qt.Key_R && row.canRegenerate) { chat.regenerate(row.id); event.accepted = true }
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
                            font.pixelSize: 11
                        }
                        ToolButton {
                            objectName: "stopButton"
                            visible: row.streaming
                            anchors.verticalCenter: parent.verticalCenter
                            text: "Stop"
                            onClicked: chat.stop()
                            Accessible.name: "Stop the reply"
                            ToolTip.visible: hovered; ToolTip.text: "Stop the reply; what arrived is kept (Esc)"
                        }
                    }

                    // Until the first word: how long Cairn has waited (a local server may be loading the model).
                    Text {
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
                            id: thought
                            objectName: "thought"
                            text: (parent.open ? "▾ " : "▸ ") + "Thought for " + Math.round(row.reasoningSeconds) + " s"
                            color: root.muted
                            TapHandler { onTapped: thought.parent.open = !thought.parent.open }
                        }
                        Text {
                            objectName: "reasoningText"
                            visible: parent.open
                            width: parent.width
                            text: row.reasoning
                            wrapMode: Text.Wrap
                            color: root.muted
                            textFormat: Text.PlainText
                        }
                    }

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
                            sourceComponent: kind === "code" ? codeBlock : chat.selectableText ? selectableBlock : textBlock
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
                            ToolButton {
                                objectName: "previousVersion"
                                text: "‹"; enabled: row.branchIndex > 0
                                onClicked: chat.switchBranch(row.id, -1)
                                Accessible.name: "Previous version"
                                ToolTip.visible: hovered; ToolTip.text: "Previous version"
                            }
                            Text {
                                objectName: "versionLabel"
                                anchors.verticalCenter: parent.verticalCenter
                                text: (row.branchIndex + 1) + " / " + row.branchCount
                                color: root.muted
                            }
                            ToolButton {
                                objectName: "nextVersion"
                                text: "›"; enabled: row.branchIndex < row.branchCount - 1
                                onClicked: chat.switchBranch(row.id, 1)
                                Accessible.name: "Next version"
                                ToolTip.visible: hovered; ToolTip.text: "Next version"
                            }
                        }
                        Text {
                            id: usageText
                            objectName: "usage"
                            anchors.verticalCenter: parent.verticalCenter
                            visible: row.hasUsage
                            text: visible ? Math.round(row.usage.tokens) + " tokens" + (row.usage.perSecond > 0 ? " · " + row.usage.perSecond.toFixed(1) + " tok/s" : "") : ""
                            color: root.muted
                            font.pixelSize: 11
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
                            ToolButton {
                                objectName: "copyButton"
                                text: card.copied ? "Copied ✓" : "Copy"
                                onClicked: card.copy()
                                Accessible.name: "Copy message"
                                ToolTip.visible: hovered; ToolTip.text: "Copy this message (Ctrl+C)"
                            }
                            ToolButton {
                                objectName: "editButton"
                                visible: row.role === "user"
                                text: "Edit"
                                onClicked: chat.edit(row.id)
                                Accessible.name: "Edit message"
                                ToolTip.visible: hovered; ToolTip.text: "Edit and send again (E)"
                            }
                            ToolButton {
                                objectName: "regenerateButton"
                                visible: row.canRegenerate
                                text: "Regenerate"
                                onClicked: chat.regenerate(row.id)
                                Accessible.name: "Regenerate reply"
                                ToolTip.visible: hovered; ToolTip.text: "Write this reply again (R)"
                            }
                        }
                    }
                }

                Component {
                    id: textBlock
                    Text {
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
                        text: parent ? parent.html : ""
                        textFormat: TextEdit.RichText
                        wrapMode: TextEdit.Wrap
                        readOnly: true
                        selectByMouse: true
                        activeFocusOnTab: false
                        color: pal.text
                        selectionColor: pal.highlight
                        selectedTextColor: pal.highlightedText
                        onLinkActivated: (link) => chat.openLink(link)
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
                                    font.pixelSize: 11
                                }
                                ToolButton {
                                    id: copyCode
                                    objectName: "copyCodeButton"
                                    anchors.right: parent.right
                                    anchors.verticalCenter: parent.verticalCenter
                                    property bool copied: false
                                    text: copied ? "Copied ✓" : "Copy"
                                    onClicked: { chat.copyCode(row.id, codeFrame.blockItem.index); copied = true; codeTimer.restart() }
                                    Timer { id: codeTimer; interval: 1500; onTriggered: copyCode.copied = false }
                                    Accessible.name: "Copy code"
                                    ToolTip.visible: hovered; ToolTip.text: "Copy this code"
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
        id: jump
        objectName: "jumpButton"
        anchors.horizontalCenter: parent.horizontalCenter
        anchors.bottom: parent.bottom
        anchors.bottomMargin: 16
        visible: !list.follow && list.count > 0
        text: "↓ Newest"
        onClicked: { list.follow = true; list.positionViewAtEnd() }
        Accessible.name: "Jump to the newest message"
        ToolTip.visible: hovered; ToolTip.text: "Jump to the newest message (End)"
    }
}
