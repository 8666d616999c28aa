"""What people see: the Gradio app (chat, review, admin), accounts and roles."""
