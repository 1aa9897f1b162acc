-- bench/examples.sh: POST /models/general/predict with the general bundle's sample_input (a 48x48 PNG, base64)
-- examples.sh checks that this body still equals the sample in the freshly built bundle's ferry.yaml.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"image_data": "iVBORw0KGgoAAAANSUhEUgAAADAAAAAwCAIAAADYYG7QAAAA6klEQVR4nO2YMQ7CMAxFXcShWDgGEisjJ2Jk5ZgMLBDS+Mdxkh/Jb6wU+/U7rdpsl9NZmDjMFkgJIQ06oaNt2fPxyl6/3a8NMiIiW9VTtufxj9kMFcJVvjFoQXvIZmNbqCRkVknAoyol5GVTVWpXyNGmqiDdeygv5B4PXjYj1MkGLE4/sq7xIC3oE5rOj9CAeamNuBNiIIQ0QkiDW6j9nwGk0Ig7IQZSoQFTK7egT0g6h6QWzyfUyQkpu8LIPriHBBYsJeTohJeCTj9aviRr7wraQ+aoDAuXPbBKYDnSG8A676FZhJBGCGm8Ab26Rav/fO4xAAAAAElFTkSuQmCC"}'
