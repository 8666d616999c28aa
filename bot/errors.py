"""What a page's logic raises for the user to read: the pages show it as a message, never as a
traceback. Shared by chat, review and admin, so none of them imports another for it."""


class UserError(Exception):
    """Something the user can fix or should know; the message is shown on the page."""
