"""The conversation drawn by Qt Quick: a QML ListView of message cards over a QAbstractListModel.

See docs/CHAT_VIEW_PROTOTYPE.md for what it was measured against and why it became the only view.
"""
